"""Small random timm ViTs covering the configurations the converter supports.

Every parameter is redrawn from N(0, 0.1) with a fixed seed (timm initialises biases to zero
and layer scales to a constant, which would hide transposed or swapped tensors).
"""

from __future__ import annotations

import numpy as np
import torch

TINY = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=7)

# name -> (timm class name, constructor kwargs)
CASES = {
    "token": ("VisionTransformer", TINY),
    "avg_no_class_token": ("VisionTransformer", {**TINY, "class_token": False, "global_pool": "avg"}),
    "registers_no_embed_class_layer_scale": (
        "VisionTransformer", {**TINY, "reg_tokens": 4, "no_embed_class": True, "init_values": 1e-5}),
    "distilled": ("VisionTransformerDistilled", TINY),
    "pre_norm_no_qkv_bias_grey_rect": (
        "VisionTransformer", {**TINY, "pre_norm": True, "qkv_bias": False, "in_chans": 1,
                              "img_size": (32, 48), "patch_size": (8, 16)}),
    "max_pool_no_final_norm_no_proj_bias": (
        "VisionTransformer", {**TINY, "global_pool": "max", "final_norm": False, "proj_bias": False}),
    "avgmax_with_prefix_mlp2": (
        "VisionTransformer", {**TINY, "global_pool": "avgmax", "pool_include_prefix": True,
                              "fc_norm": False, "mlp_ratio": 2.0, "reg_tokens": 1}),
    "no_pos_embed_headless": ("VisionTransformer", {**TINY, "pos_embed": "none", "num_classes": 0}),
    "qk_norm_quick_gelu": ("VisionTransformer", {**TINY, "qk_norm": True, "act_layer": "quick_gelu"}),
    # SigLIP's layout: no class token, attention pooling; with the tanh GELU of HF's SigLIP.
    "map_no_class_token_gelu_tanh": (
        "VisionTransformer", {**TINY, "class_token": False, "global_pool": "map", "act_layer": "gelu_tanh"}),
    "map_registers_layer_scale": (
        "VisionTransformer", {**TINY, "global_pool": "map", "reg_tokens": 2, "init_values": 1e-5}),
    # BEiT: relative position bias, layer scale as gamma_1/gamma_2, q/v biases without a k bias.
    "beit_rel_pos_avg": ("Beit", {**TINY, "use_abs_pos_emb": False, "use_rel_pos_bias": True, "init_values": 0.1}),
    "beit_rel_pos_token_rect_headless": (
        "Beit", {**TINY, "img_size": (32, 40), "use_abs_pos_emb": False, "use_rel_pos_bias": True,
                 "global_pool": "token", "num_classes": 0, "init_values": 0.1}),
    "beit_abs_pos_no_qkv_bias": ("Beit", {**TINY, "use_abs_pos_emb": True, "use_rel_pos_bias": False,
                                           "qkv_bias": False, "init_values": None}),
    "beit_swiglu_scale_mlp": ("Beit", {**TINY, "use_abs_pos_emb": False, "use_rel_pos_bias": True,
                                       "swiglu_mlp": True, "scale_mlp": True, "init_values": 0.1}),
    # DINOv2 giant's MLP: SwiGLU with packed gate and value (gate first), here with an inner norm.
    "swiglu_packed_scale_mlp_norm": (
        "VisionTransformer", {**TINY, "mlp_layer": "SwiGLUPacked", "act_layer": "silu", "mlp_ratio": 4 * 2 / 3 * 2,
                              "scale_mlp_norm": True}),
    # EVA-02: rotary embedding rescaled to a reference grid, SwiGLU, layer scale as gamma_1/gamma_2.
    "eva02_rope_swiglu": ("Eva", {**TINY, "mlp_ratio": 4 * 2 / 3, "swiglu_mlp": True, "use_rot_pos_emb": True,
                                  "ref_feat_shape": (3, 3), "init_values": 0.1}),
    # EVA-02 base/large: separate q/k/v projections, SwiGLU with its inner norm; a rectangular grid.
    "eva02_unfused_qkv_scale_mlp_rect": (
        "Eva", {**TINY, "img_size": (32, 48), "qkv_fused": False, "mlp_ratio": 4 * 2 / 3, "swiglu_mlp": True,
                "scale_mlp": True, "use_rot_pos_emb": True, "ref_feat_shape": (4, 4), "init_values": 0.1}),
    # timm's vit_*_rope_reg1_gap: no class token, a register, no absolute positions; here also
    # qk-norm and the (col, row) coordinate order with an offset.
    "eva_rope_register_gap_xy_qk_norm": (
        "Eva", {**TINY, "class_token": False, "num_reg_tokens": 1, "global_pool": "avg", "use_abs_pos_emb": False,
                "use_rot_pos_emb": True, "rope_grid_offset": 1.0, "rope_grid_indexing": "xy", "qk_norm": True,
                "init_values": 1e-5}),
    # timm's vit_relpos_*: a relative position bias from an MLP of log-spaced offsets, no class
    # token; with a learned table, a class token, qk-norm and layer scale; Swin's MLP variant.
    "relpos_mlp_gap": ("VisionTransformerRelPos", {**TINY, "fc_norm": True}),
    "relpos_bias_token_qk_norm_layer_scale": (
        "VisionTransformerRelPos", {**TINY, "rel_pos_type": "bias", "class_token": True, "global_pool": "token",
                                    "qk_norm": True, "init_values": 1e-5}),
    "relpos_swin_mlp_class_token_gap": (
        "VisionTransformerRelPos", {**TINY, "rel_pos_type": "mlp_swin", "class_token": True, "img_size": (32, 48)}),
    "eva_rope_half_pre_norm_token": (
        "Eva", {**TINY, "use_rot_pos_emb": True, "rope_rotate_half": True, "use_pre_transformer_norm": True,
                "global_pool": "token", "qkv_bias": False}),
}

# Real timm architectures (random init): names as users pass them.
NAMED = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224",
         "vit_little_patch16_reg4_gap_256", "vit_base_patch32_clip_quickgelu_224",
         "vit_base_patch32_siglip_256", "beitv2_base_patch16_224", "eva02_tiny_patch14_224",
         "vit_relpos_small_patch16_224"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter from N(0, 0.1) with `seed`; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def make_case(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    import timm.layers
    from timm.models.beit import Beit
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    cls_name, kwargs = CASES[name]
    cls = {"VisionTransformer": VisionTransformer, "VisionTransformerDistilled": VisionTransformerDistilled,
           "Beit": Beit, "Eva": Eva, "VisionTransformerRelPos": VisionTransformerRelPos}[cls_name]
    kwargs = {**kwargs, **overrides}
    if isinstance(kwargs.get("mlp_layer"), str):
        kwargs["mlp_layer"] = getattr(timm.layers, kwargs["mlp_layer"])
    torch.manual_seed(seed)
    return randomize(cls(**kwargs), seed)


def make_named(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return randomize(timm.create_model(name, pretrained=False, **kwargs), seed)


def random_images(model: torch.nn.Module, n: int = 2, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs `[n, H, W, C]` (NHWC, already 'normalised')."""
    channels = model.patch_embed.proj.in_channels
    height, width = model.patch_embed.img_size
    return np.random.default_rng(seed).standard_normal((n, height, width, channels), np.float32)


def set_fused(model: torch.nn.Module, fused: bool) -> None:
    for block in model.blocks:
        block.attn.fused_attn = fused
    if getattr(model, "attn_pool", None) is not None:
        model.attn_pool.fused_attn = fused
