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
}

# Real timm architectures (random init): names as users pass them.
NAMED = ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "deit3_small_patch16_224",
         "vit_little_patch16_reg4_gap_256", "vit_base_patch32_clip_quickgelu_224",
         "vit_base_patch32_siglip_256", "beitv2_base_patch16_224"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Redraw every parameter from N(0, 0.1) with `seed`; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def make_case(name: str, seed: int = 0, **overrides) -> torch.nn.Module:
    from timm.models.beit import Beit
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cls_name, kwargs = CASES[name]
    cls = {"VisionTransformer": VisionTransformer, "VisionTransformerDistilled": VisionTransformerDistilled,
           "Beit": Beit}[cls_name]
    torch.manual_seed(seed)
    return randomize(cls(**{**kwargs, **overrides}), seed)


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
