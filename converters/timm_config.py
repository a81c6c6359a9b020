"""timm's `VisionTransformer`, `Beit`, `Eva` and `VisionTransformerRelPos` settings ->
`ViTConfig`: every structural setting is read and checked, and anything `vit_jax_va.ViT` does
not implement is refused by name. The way back (constructor kwargs, `create_timm_model`) is
`converters.timm_write`."""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.config import ViTConfig


class UnsupportedModelError(CheckpointError):
    """The timm model uses a setting this converter does not implement (named in the message)."""


def config_from_timm(model: Any) -> ViTConfig:
    """Read a `ViTConfig` off a timm `VisionTransformer` (or DeiT `VisionTransformerDistilled`).

    Every structural setting is checked against what `vit_jax_va.ViT` implements; anything else
    (attention-output norm, gated attention, rotary/relative positions, other block, MLP, norm
    or activation types, attention pooling other than one latent query, patch-embedding norm)
    raises
    `UnsupportedModelError` naming the setting. The converter reads the modules, not the
    constructor arguments, so settings that leave no trace in them (drop rates, init schemes,
    `fused_attn`) cannot change what it converts.
    """
    import torch.nn as nn
    from timm.layers import AttentionPoolLatent, LayerScale, PatchEmbed
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    def refuse(setting: str) -> None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: {setting} is not supported by vit_jax_va.ViT")

    from timm.models.beit import Beit
    from timm.models.eva import Eva

    from converters.timm_beit import beit_fields
    from converters.timm_eva import eva_fields
    from converters.timm_relpos import is_relpos, relpos_fields

    if isinstance(model, Beit):
        return _config_from_family(model, beit_fields, refuse)
    if isinstance(model, Eva):
        return _config_from_family(model, eva_fields, refuse)
    if is_relpos(model):
        return _config_from_family(model, relpos_fields, refuse)
    if not isinstance(model, VisionTransformer):
        refuse(f"model class {type(model).__module__}.{type(model).__name__} "
               "(timm VisionTransformer, VisionTransformerDistilled, VisionTransformerRelPos, Beit and "
               "Eva are read)")
    if type(model.patch_embed) is not PatchEmbed:
        refuse(f"patch embedding {type(model.patch_embed).__name__}")
    if not isinstance(model.patch_embed.norm, nn.Identity):
        refuse("a norm layer inside the patch embedding (embed_norm_layer)")
    if model.global_pool not in ("token", "avg", "max", "avgmax", "map"):
        refuse(f"global_pool={model.global_pool!r}")
    pool = getattr(model, "attn_pool", None)
    if pool is not None and type(pool) is not AttentionPoolLatent:
        refuse(f"attention pooling {type(pool).__name__} (global_pool={model.global_pool!r})")

    blocks = list(model.blocks)
    first = blocks[0]
    eps = _layer_norm_eps(first.norm1, "blocks.0.norm1", refuse)
    mlp0 = mlp_fields(first.mlp, "blocks.0.mlp", eps, refuse)
    qk_norm = not isinstance(first.attn.q_norm, nn.Identity)
    for i, block in enumerate(blocks):
        where = f"blocks.{i}"
        if type(block) is not Block:
            refuse(f"{where} block type {type(block).__name__}")
        attn, mlp = block.attn, block.mlp
        if type(attn) is not Attention:
            refuse(f"{where}.attn type {type(attn).__name__}")
        if qk_norm:
            for name in ("q_norm", "k_norm"):
                norm = getattr(attn, name)
                if _layer_norm_eps(norm, f"{where}.attn.{name}", refuse) != eps or norm.normalized_shape != (attn.head_dim,):
                    refuse(f"{where}.attn.{name} differing from blocks.0.norm1's eps or not over the head dim")
        elif not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            refuse(f"{where}.attn qk_norm differing from blocks.0")
        if not isinstance(attn.norm, nn.Identity):
            refuse(f"{where}.attn scale_attn_norm")
        if getattr(attn, "gate", None) is not None:
            refuse(f"{where}.attn gated attention")
        if attn.num_heads * attn.head_dim != model.embed_dim or attn.proj.out_features != model.embed_dim:
            refuse(f"{where}.attn head dim {attn.head_dim} x {attn.num_heads} heads != "
                   f"embed_dim {model.embed_dim} (attn_head_dim / dim_out)")
        if mlp_fields(mlp, f"{where}.mlp", eps, refuse) != mlp0:
            refuse(f"{where}.mlp differing from blocks.0's (type, activation, width, norm or biases)")
        for name in ("norm1", "norm2"):
            if _layer_norm_eps(getattr(block, name), f"{where}.{name}", refuse) != eps:
                refuse(f"{where}.{name} eps differing from blocks.0.norm1")
        for name in ("ls1", "ls2"):
            scale = getattr(block, name)
            if not isinstance(scale, (LayerScale, nn.Identity)):
                refuse(f"{where}.{name} type {type(scale).__name__}")
        same = (attn.num_heads == first.attn.num_heads,
                (attn.qkv.bias is None) == (first.attn.qkv.bias is None),
                (attn.proj.bias is None) == (first.attn.proj.bias is None),
                mlp0["bias"] == (attn.proj.bias is not None),
                type(block.ls1) is type(first.ls1) and type(block.ls2) is type(first.ls1))
        if not all(same):
            refuse(f"{where} differing from blocks.0 (heads, biases, MLP width or layer scale)")
    for name in ("norm_pre", "norm", "fc_norm"):
        module = getattr(model, name)
        if not isinstance(module, nn.Identity) and _layer_norm_eps(module, name, refuse) != eps:
            refuse(f"{name} eps differing from the blocks'")

    if pool is not None:
        _check_attention_pool(pool, first, eps, mlp0, refuse)

    pre_norm = not isinstance(model.norm_pre, nn.Identity)
    if (model.patch_embed.proj.bias is None) != pre_norm:
        refuse("a patch-embedding bias that does not follow pre_norm (bias iff not pre_norm)")
    distilled = hasattr(model, "dist_token")
    if distilled and not isinstance(model.head, nn.Identity) and not isinstance(model.head_dist, nn.Linear):
        refuse("a distilled model without a distillation head")
    for name in ("head",) + (("head_dist",) if distilled else ()):
        if not isinstance(getattr(model, name), (nn.Linear, nn.Identity)):
            refuse(f"{name} type {type(getattr(model, name)).__name__}")

    return ViTConfig(
        **_embedding_and_preprocessing(model),
        depth=len(blocks),
        num_heads=first.attn.num_heads,
        mlp_ratio=mlp0["hidden"] / model.embed_dim,
        qkv_bias=first.attn.qkv.bias is not None,
        proj_bias=first.attn.proj.bias is not None,
        qk_norm=qk_norm,
        act=mlp0["act"], swiglu=mlp0["swiglu"], mlp_norm=mlp0["mlp_norm"],
        class_token=model.cls_token is not None,
        distillation_token=distilled,
        num_register_tokens=model.num_reg_tokens,
        pos_embed=model.pos_embed is not None,
        no_embed_class=model.no_embed_class,
        pre_norm=pre_norm,
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        pool=model.global_pool,
        pool_include_prefix=bool(model.pool_include_prefix),
        layer_scale=isinstance(first.ls1, LayerScale),
        layer_norm_eps=eps,
    )


def _embedding_and_preprocessing(model: Any) -> dict[str, Any]:
    """The `ViTConfig` fields every timm ViT family reads alike: image and patch size, channels,
    width, classes, and the eval preprocessing of its pretrained config."""
    import timm

    data = timm.data.resolve_data_config({}, model=model)
    in_channels = model.patch_embed.proj.in_channels
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if len(mean) != in_channels:
        # timm keeps RGB statistics for models adapted to other channel counts; use their mean.
        mean, std = (float(np.mean(mean)),) * in_channels, (float(np.mean(std)),) * in_channels
    return dict(image_size=tuple(model.patch_embed.img_size), patch_size=tuple(model.patch_embed.patch_size),
                in_channels=in_channels, width=model.embed_dim, num_classes=model.num_classes, mean=mean, std=std,
                interpolation=data["interpolation"], crop_fraction=float(data["crop_pct"]),
                crop_mode=data.get("crop_mode", "center"))


def _config_from_family(model: Any, fields: Any, refuse: Any) -> ViTConfig:
    """A timm `Beit` or `Eva`: its blocks, positions and pooling from `fields`
    (`converters.timm_beit.beit_fields`, `converters.timm_eva.eva_fields`: `(model, refuse)` ->
    `ViTConfig` fields), its norms and MLPs checked as a ViT's are."""
    import torch.nn as nn
    from timm.layers import PatchEmbed

    if type(model.patch_embed) is not PatchEmbed or not isinstance(model.patch_embed.norm, nn.Identity):
        refuse(f"patch embedding {type(model.patch_embed).__name__} with a norm")
    first = model.blocks[0]
    eps = _layer_norm_eps(first.norm1, "blocks.0.norm1", refuse)
    mlp0 = mlp_fields(first.mlp, "blocks.0.mlp", eps, refuse)
    for i, block in enumerate(model.blocks):
        for name in ("norm1", "norm2"):
            if _layer_norm_eps(getattr(block, name), f"blocks.{i}.{name}", refuse) != eps:
                refuse(f"blocks.{i}.{name} eps differing from blocks.0.norm1")
        if mlp_fields(block.mlp, f"blocks.{i}.mlp", eps, refuse) != mlp0:
            refuse(f"blocks.{i}.mlp differing from blocks.0's (type, activation, width, norm or biases)")
    for name in ("norm_pre", "norm", "fc_norm"):
        module = getattr(model, name, None)
        if module is not None and not isinstance(module, nn.Identity) and _layer_norm_eps(module, name, refuse) != eps:
            refuse(f"{name} eps differing from the blocks'")
        if (block.attn.proj.bias is not None) != mlp0["bias"]:
            refuse(f"blocks.{i}: an attention projection bias without MLP biases, or the reverse")
    if not isinstance(model.head, (nn.Linear, nn.Identity)):
        refuse(f"head type {type(model.head).__name__}")
    return ViTConfig(**_embedding_and_preprocessing(model), **fields(model, refuse), act=mlp0["act"],
                     swiglu=mlp0["swiglu"], mlp_norm=mlp0["mlp_norm"],
                     mlp_ratio=mlp0["hidden"] / model.embed_dim, proj_bias=mlp0["bias"], layer_norm_eps=eps)


def mlp_fields(mlp: Any, where: str, eps: float, refuse: Any) -> dict[str, Any]:
    """What a timm block MLP computes: `act`, `swiglu`, `mlp_norm` (the `ViTConfig` fields),
    `hidden` (units) and `bias` (fc1 and fc2 both have one). Reads `Mlp`, `SwiGLU` (split gate)
    and `GluMlp` with SiLU and the gate first (`SwiGLUPacked`); refuses others by name."""
    import torch.nn as nn
    from timm.layers import GluMlp, Mlp, SwiGLU

    kind = type(mlp)
    if kind is Mlp:
        act, swiglu, layers, hidden = _activation(mlp.act, where, refuse), False, (mlp.fc1, mlp.fc2), mlp.fc1.out_features
    elif kind is SwiGLU:
        swiglu, layers, hidden = True, (mlp.fc1_g, mlp.fc1_x, mlp.fc2), mlp.fc1_g.out_features
    elif kind is GluMlp:
        if mlp.gate_last or mlp.chunk_dim != -1 or not isinstance(mlp.fc1, nn.Linear):
            refuse(f"{where} GluMlp with the gate last or convolutions (SwiGLUPacked is read)")
        swiglu, layers, hidden = True, (mlp.fc1, mlp.fc2), mlp.fc1.out_features // 2
    else:
        refuse(f"{where} type {kind.__name__} (Mlp, SwiGLU and SwiGLUPacked are read)")
    if swiglu:
        if type(mlp.act) is not nn.SiLU:
            refuse(f"{where} gated MLP with activation {mlp.act!r} (SiLU, that is SwiGLU, is read)")
        act = "gelu"  # unused by a SwiGLU MLP
    mlp_norm = not isinstance(mlp.norm, nn.Identity)
    if mlp_norm and _layer_norm_eps(mlp.norm, f"{where}.norm", refuse) != eps:
        refuse(f"{where}.norm (scale_mlp_norm) eps differing from the blocks'")
    biases = {layer.bias is not None for layer in layers}
    if len(biases) != 1:
        refuse(f"{where} with a bias on some of its layers only")
    return dict(act=act, swiglu=swiglu, mlp_norm=mlp_norm, hidden=hidden, bias=biases.pop())


def _activation(module: Any, where: str, refuse: Any) -> str:
    """The `ViTConfig.act` name of a timm MLP activation module."""
    import torch.nn as nn
    from timm.layers.activations import GELUTanh, QuickGELU

    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}[module.approximate]
    if type(module) is GELUTanh:
        return "gelu_tanh"
    if type(module) is QuickGELU:
        return "quick_gelu"
    refuse(f"{where} activation {module!r} (exact GELU, tanh GELU and QuickGELU are)")


def _check_attention_pool(pool: Any, block: Any, eps: float, mlp: dict[str, Any], refuse: Any) -> None:
    """Refuse a timm `AttentionPoolLatent` that `vit_jax_va.model.AttentionPool` does not
    compute: one latent query projected by `q`, the blocks' heads, width, MLP, norm and
    activation, no position embedding or qk-norm of its own, the first latent pooled."""
    import torch.nn as nn
    from timm.layers import Mlp

    where = "attn_pool"
    if pool.latent_len != 1 or pool.pool != "token":
        refuse(f"{where} with {pool.latent_len} latent queries (pool_type={pool.pool!r}; one is supported)")
    if pool.pos_embed is not None:
        refuse(f"{where} position embedding")
    if not isinstance(pool.q, nn.Linear) or pool.q.in_features != pool.latent_dim:
        refuse(f"{where} without a query projection (q_proj=False)")
    if not (isinstance(pool.q_norm, nn.Identity) and isinstance(pool.k_norm, nn.Identity)):
        refuse(f"{where} qk_norm")
    if pool.num_heads != block.attn.num_heads or pool.latent_dim != block.attn.proj.out_features:
        refuse(f"{where} heads or width differing from the blocks'")
    if not isinstance(pool.proj, nn.Linear) or pool.mlp is None or type(pool.mlp) is not Mlp:
        refuse(f"{where} without its projection and MLP (out_features=0)")
    if mlp["swiglu"] or mlp["mlp_norm"]:
        refuse(f"{where} with blocks whose MLP is gated or normed (its own MLP is a plain one)")
    if pool.mlp.fc1.out_features != mlp["hidden"] or _activation(pool.mlp.act, f"{where}.mlp", refuse) != mlp["act"]:
        refuse(f"{where}.mlp width or activation differing from the blocks'")
    if _layer_norm_eps(pool.norm, f"{where}.norm", refuse) != eps:
        refuse(f"{where}.norm eps differing from the blocks'")
    if any(layer.bias is None for layer in (pool.q, pool.kv, pool.proj, pool.mlp.fc1, pool.mlp.fc2)):
        refuse(f"{where} without biases (qkv_bias=False)")


def _layer_norm_eps(module: Any, where: str, refuse: Any) -> float:
    import torch.nn as nn

    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        refuse(f"{where} norm {type(module).__name__} (only affine LayerNorm is)")
    return float(module.eps)
