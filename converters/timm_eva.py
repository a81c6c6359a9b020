"""timm's `Eva` (EVA-02 and timm's own `vit_*_rope_*`) -> `ViTConfig` fields.

EVA-02 is a ViT with a rotary position embedding on every head's patch queries and keys
(`ViTConfig.rope`), a SwiGLU MLP with a LayerNorm inside (`swiglu`, `mlp_norm`), layer scale as
`gamma_1`/`gamma_2`, and query and value biases without a key bias (fused into one `qkv`, or
separate `q_proj`/`k_proj`/`v_proj`). The names are mapped in `converters.timm_names`."""

from __future__ import annotations

from typing import Any


def eva_fields(model: Any, refuse: Any) -> dict[str, Any]:
    """The block, position and pooling `ViTConfig` fields of a timm `Eva`
    (`converters.timm_config` reads its embedding, norms, MLP and preprocessing); refuses what
    `vit_jax_va.ViT` does not compute, by name."""
    import torch.nn as nn
    from timm.layers.pos_embed_sincos import RotaryEmbeddingCat
    from timm.models.eva import EvaAttention, EvaBlock

    blocks = list(model.blocks)
    first = blocks[0]
    for i, block in enumerate(blocks):
        where = f"blocks.{i}"
        if type(block) is not EvaBlock:
            refuse(f"{where} block type {type(block).__name__} (use_post_norm)")
        attn = block.attn
        if type(attn) is not EvaAttention:
            refuse(f"{where}.attn type {type(attn).__name__} (attn_type={type(attn).__name__!r})")
        if not isinstance(attn.norm, nn.Identity):
            refuse(f"{where}.attn norm on the attention output (scale_attn_inner)")
        if attn.gate is not None:
            refuse(f"{where}.attn gated attention (gated_attn)")
        if attn.num_heads * attn.head_dim != model.embed_dim:
            refuse(f"{where}.attn head dim {attn.head_dim} x {attn.num_heads} heads != embed_dim "
                   f"{model.embed_dim} (attn_head_dim)")
        if isinstance(attn.q_norm, nn.Identity) != isinstance(first.attn.q_norm, nn.Identity):
            refuse(f"{where}.attn qk_norm differing from blocks.0")
        if not isinstance(attn.q_norm, nn.Identity):
            for name in ("q_norm", "k_norm"):
                norm = getattr(attn, name)
                if (not isinstance(norm, nn.LayerNorm) or norm.normalized_shape != (attn.head_dim,)
                        or norm.eps != first.norm1.eps):
                    refuse(f"{where}.attn.{name} other than a LayerNorm over the head dim with the blocks' eps")
        if (block.gamma_1 is None) != (first.gamma_1 is None) or (block.gamma_1 is None) != (block.gamma_2 is None):
            refuse(f"{where}: layer scale on one branch or in some blocks only (attn_only_layer_scale)")
        if _qkv_bias(attn) != _qkv_bias(first.attn) or attn.num_heads != first.attn.num_heads:
            refuse(f"{where}: heads or query/value biases differing from blocks.0")
        if bool(getattr(attn, "rotate_half", False)) != bool(getattr(first.attn, "rotate_half", False)):
            refuse(f"{where}: rotate_half differing from blocks.0")
        if attn.num_prefix_tokens != model.num_prefix_tokens:
            refuse(f"{where}.attn with {attn.num_prefix_tokens} unrotated prefix tokens for the model's "
                   f"{model.num_prefix_tokens}")
    if model.global_pool not in ("token", "avg", "max", "avgmax"):
        refuse(f"global_pool={model.global_pool!r}")
    if getattr(model, "attn_pool", None) is not None:
        refuse("attention pooling (global_pool='map') on an Eva")
    if getattr(model, "patch_drop", None) is not None:
        refuse("patch dropout at eval time (patch_drop_rate)")

    rope = model.rope
    fields: dict[str, Any] = {}
    if rope is not None:
        if type(rope) is not RotaryEmbeddingCat or getattr(model, "rope_mixed", False):
            refuse(f"rotary embedding {type(rope).__name__} (rope_type='cat', EVA-02's, is read)")
        if rope.in_pixels or getattr(rope, "grid_type", "index") != "index":
            refuse("a rotary embedding on pixel or centred coordinates (in_pixels / grid_type)")
        if rope.feat_shape is not None and tuple(rope.feat_shape) != tuple(model.patch_embed.grid_size):
            refuse(f"a rotary embedding for grid {tuple(rope.feat_shape)} on a "
                   f"{tuple(model.patch_embed.grid_size)} patch grid")
        if rope.grid_indexing not in ("ij", "xy"):
            refuse(f"rope_grid_indexing={rope.grid_indexing!r}")
        if bool(rope.rotate_half) != bool(getattr(first.attn, "rotate_half", False)):
            refuse("a rotary embedding laid out for the other rotation (rope_rotate_half)")
        fields = dict(rope=True, rope_ref_grid=None if rope.ref_feat_shape is None else tuple(rope.ref_feat_shape),
                      rope_temperature=float(rope.temperature), rope_offset=float(rope.grid_offset),
                      rope_xy=rope.grid_indexing == "xy", rope_rotate_half=bool(rope.rotate_half))

    pre_norm = not isinstance(model.norm_pre, nn.Identity)
    if (model.patch_embed.proj.bias is None) != pre_norm:
        refuse("a patch-embedding bias that does not follow the pre-transformer norm")
    fc_norm = not isinstance(model.fc_norm, nn.Identity)
    norm = not isinstance(model.norm, nn.Identity)
    if fc_norm and norm:
        refuse("both a final norm and an fc_norm (use_post_transformer_norm with use_fc_norm)")
    return dict(
        **fields, depth=len(blocks), num_heads=first.attn.num_heads, qkv_bias=_qkv_bias(first.attn),
        qk_norm=not isinstance(first.attn.q_norm, nn.Identity),
        class_token=model.cls_token is not None,
        num_register_tokens=0 if model.reg_token is None else int(model.reg_token.shape[1]),
        pos_embed=model.pos_embed is not None, no_embed_class=bool(model.no_embed_class),
        pre_norm=pre_norm, final_norm=fc_norm or norm, fc_norm=fc_norm, pool=model.global_pool,
        layer_scale=first.gamma_1 is not None)


def _qkv_bias(attn: Any) -> bool:
    """Whether an `EvaAttention` has query and value biases (it never has a key bias)."""
    if attn.qkv is not None:
        return attn.q_bias is not None
    return attn.q_proj.bias is not None


def eva_kwargs(config: Any) -> dict[str, Any]:
    """timm `Eva` constructor kwargs for a `ViTConfig` with a rotary embedding; a setting `Eva`
    cannot take is refused by name (ValueError)."""
    from converters.timm_write import family_kwargs

    c = config
    fixed = {"distillation_token": False, "proj_bias": True, "pool_include_prefix": False, "rel_pos_bias": False}
    if not c.swiglu:
        fixed["act"] = "gelu"
    return family_kwargs(
        c, "Eva", fixed, ("token", "avg", "max", "avgmax"), qk_norm=c.qk_norm, swiglu_mlp=c.swiglu,
        scale_mlp=c.mlp_norm, class_token=c.class_token, num_reg_tokens=c.num_register_tokens,
        no_embed_class=c.no_embed_class, use_abs_pos_emb=c.pos_embed, use_rot_pos_emb=True, rope_type="cat",
        ref_feat_shape=c.rope_ref_grid, rope_temperature=c.rope_temperature, rope_grid_offset=c.rope_offset,
        rope_grid_indexing="xy" if c.rope_xy else "ij", rope_rotate_half=c.rope_rotate_half,
        use_pre_transformer_norm=c.pre_norm, use_fc_norm=c.fc_norm,
        use_post_transformer_norm=c.final_norm and not c.fc_norm)
