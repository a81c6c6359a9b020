"""`ViTConfig` -> timm: the constructor kwargs of the timm class that computes a config
(`VisionTransformer`, `VisionTransformerDistilled`, `Beit`, `VisionTransformerRelPos`, `Eva`:
`timm_family`) and `create_timm_model`, which builds it and loads a state dict strictly. The
family modules (`converters.timm_beit`, `timm_relpos`, `timm_eva`) give their specific kwargs
through `family_kwargs`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_jax_va.config import ViTConfig


def timm_mlp_ratio(config: ViTConfig) -> float:
    """An `mlp_ratio` from which timm builds `config.mlp_hidden` units (timm: int(width * ratio))."""
    ratio = config.mlp_ratio
    if int(config.width * ratio) != config.mlp_hidden:
        ratio = (config.mlp_hidden + 0.5) / config.width
    return ratio


def norm_layer_kwargs(config: ViTConfig) -> dict[str, Any]:
    """`norm_layer=` for a timm constructor when the config's LayerNorm eps is not timm's 1e-6."""
    if config.layer_norm_eps == 1e-6:
        return {}
    import functools

    import torch.nn as nn

    return {"norm_layer": functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)}


def family_kwargs(config: ViTConfig, family: str, fixed: Mapping[str, Any], pools: tuple[str, ...],
                  **specific: Any) -> dict[str, Any]:
    """Constructor kwargs of a timm `family` class (`Beit`, `Eva`, `VisionTransformerRelPos`)
    for `config`: the settings every family takes alike, and `specific`. `fixed` holds the
    `ViTConfig` values the class cannot change and `pools` the pools it has; anything else is
    refused by name (ValueError)."""
    wrong = [f"{k}={getattr(config, k)!r}" for k, v in fixed.items() if getattr(config, k) != v]
    if config.pool not in pools:
        wrong.append(f"pool={config.pool!r}")
    if wrong:
        raise ValueError(f"timm's {family} cannot take {', '.join(wrong)}")
    c = config
    return dict(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels, num_classes=c.num_classes,
                global_pool=c.pool, embed_dim=c.width, depth=c.depth, num_heads=c.num_heads, qkv_bias=c.qkv_bias,
                mlp_ratio=timm_mlp_ratio(c), init_values=1.0 if c.layer_scale else None,
                **norm_layer_kwargs(c), **specific)


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Constructor kwargs for timm's `VisionTransformer` (or the distilled one) for `config`."""
    if config.rel_pos_bias or config.rope:
        raise ValueError("rel_pos_bias / rope: timm's VisionTransformer has neither; "
                         "create_timm_model writes these as timm Beit / Eva")
    kwargs = dict(
        img_size=config.image_size, patch_size=config.patch_size, in_chans=config.in_channels,
        num_classes=config.num_classes, global_pool=config.pool, embed_dim=config.width,
        depth=config.depth, num_heads=config.num_heads, mlp_ratio=timm_mlp_ratio(config),
        qkv_bias=config.qkv_bias, proj_bias=config.proj_bias, qk_norm=config.qk_norm,
        act_layer=None if config.act == "gelu" else config.act, scale_mlp_norm=config.mlp_norm,
        init_values=1.0 if config.layer_scale else None, class_token=config.class_token,
        pos_embed="learn" if config.pos_embed else "none", no_embed_class=config.no_embed_class,
        reg_tokens=config.num_register_tokens, pre_norm=config.pre_norm,
        final_norm=config.final_norm, fc_norm=config.fc_norm,
        pool_include_prefix=config.pool_include_prefix, **norm_layer_kwargs(config),
    )
    if config.swiglu:
        import torch.nn as nn
        from timm.layers import SwiGLU

        kwargs.update(mlp_layer=SwiGLU, act_layer=nn.SiLU)
    return kwargs


def timm_family(config: ViTConfig, state_dict: Mapping[str, Any] | None = None) -> str:
    """Which timm class writes `config`: 'eva' (a rotary embedding), 'beit' or 'relpos' (a
    relative position bias: `Beit` when it takes the config and, given `state_dict` in our
    names, the key bias is zero, which `Beit` lacks; else `VisionTransformerRelPos`), or 'vit'
    (`VisionTransformer`, `VisionTransformerDistilled`)."""
    from converters.timm_beit import beit_kwargs
    from converters.timm_relpos import relpos_kwargs

    if config.rope:
        return "eva"
    if not config.rel_pos_bias:
        return "vit"
    try:
        beit_kwargs(config)
    except ValueError as beit_refusal:
        try:
            relpos_kwargs(config)
        except ValueError as relpos_refusal:
            raise ValueError(f"{beit_refusal}; {relpos_refusal}") from None
        return "relpos"
    biases = [v for k, v in (state_dict or {}).items() if k.endswith(".attn.qkv.bias")]
    return "relpos" if any(np.any(np.split(np.asarray(b), 3)[1] != 0) for b in biases) else "beit"


def create_timm_model(config: ViTConfig, state_dict: Mapping[str, Any] | None = None) -> Any:
    """A timm model with `config`'s architecture in eval mode, loaded strictly from `state_dict`
    (in the class's names, as `converters.to_timm` writes them): a `VisionTransformer`
    (`VisionTransformerDistilled`), a `Beit` or a `VisionTransformerRelPos` for a relative
    position bias, an `Eva` for a rotary embedding (`timm_family`; `converters.timm_beit`,
    `timm_relpos`, `timm_eva` say which configs they can write)."""
    import torch
    from timm.models.beit import Beit
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    from converters.timm_beit import beit_kwargs
    from converters.timm_eva import eva_kwargs
    from converters.timm_relpos import relpos_kwargs

    family = timm_family(config)
    if family == "beit" and state_dict is not None and any(".attn.rel_pos." in k for k in state_dict):
        family = "relpos"  # to_timm wrote it so (a nonzero key bias)
    if family == "eva":
        model = Eva(**eva_kwargs(config))
    elif family == "beit":
        model = Beit(**beit_kwargs(config))
    elif family == "relpos":
        model = VisionTransformerRelPos(**relpos_kwargs(config))
    else:
        cls = VisionTransformerDistilled if config.distillation_token else VisionTransformer
        model = cls(**timm_kwargs(config))
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}),
                            "mean": config.mean, "std": config.std,
                            "interpolation": config.interpolation,
                            "crop_pct": config.crop_fraction, "crop_mode": config.crop_mode,
                            "input_size": (config.in_channels, *config.image_size)}
    if state_dict is not None:
        model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()},
                              strict=True)
    return model.eval()
