"""timm's `Beit` -> `ViTConfig`, and its state-dict names -> the `VisionTransformer` names that
`converters.timm_names` maps onto ours.

BEiT is a ViT with a relative position bias in every block (`ViTConfig.rel_pos_bias`), layer
scale as `gamma_1`/`gamma_2` parameters (ours: `ls1.gamma`/`ls2.gamma`) and query and value
biases without a key bias (ours: one `qkv` bias whose key part is zero); the names are mapped
in `converters.timm_names`."""

from __future__ import annotations

from typing import Any


def beit_fields(model: Any, refuse: Any) -> dict[str, Any]:
    """The block and pooling `ViTConfig` fields of a timm `Beit` (`converters.timm_config`
    reads the embedding, norms, activation and preprocessing as for any timm ViT); refuses
    what `vit_jax_va.ViT` does not compute, by name."""
    if model.rel_pos_bias is not None:
        refuse("a relative position bias shared by all blocks (use_shared_rel_pos_bias)")
    blocks = list(model.blocks)
    first = blocks[0]
    for i, block in enumerate(blocks):
        attn = block.attn
        if attn.qkv_bias_separate:
            refuse(f"blocks.{i}.attn qkv_bias_separate")
        if (attn.relative_position_bias_table is None) != (first.attn.relative_position_bias_table is None):
            refuse(f"blocks.{i}: a relative position bias in some blocks only")
        if (block.gamma_1 is None) != (first.gamma_1 is None):
            refuse(f"blocks.{i}: layer scale in some blocks only")
        if (attn.q_bias is None) != (first.attn.q_bias is None):
            refuse(f"blocks.{i}: query/value biases in some blocks only")
        if attn.num_heads * (attn.proj.in_features // attn.num_heads) != model.embed_dim:
            refuse(f"blocks.{i}.attn head dim differing from embed_dim / heads (attn_head_dim)")
    table = first.attn.relative_position_bias_table
    if table is not None and tuple(first.attn.window_size) != tuple(model.patch_embed.grid_size):
        refuse("a relative position window other than the patch grid")
    if model.global_pool not in ("avg", "token"):
        refuse(f"global_pool={model.global_pool!r}")
    import torch.nn as nn

    return dict(
        qkv_bias=first.attn.q_bias is not None,
        rel_pos_bias=table is not None, class_token=True, pos_embed=model.pos_embed is not None,
        final_norm=True, fc_norm=not isinstance(model.fc_norm, nn.Identity), pool=model.global_pool,
        layer_scale=first.gamma_1 is not None, num_heads=first.attn.num_heads, depth=len(blocks))



def beit_kwargs(config: Any) -> dict[str, Any]:
    """timm `Beit` constructor kwargs for a `ViTConfig` with a relative position bias; a setting
    `Beit` cannot take is refused by name (ValueError)."""
    from converters.timm_write import family_kwargs

    c = config
    fixed = {"class_token": True, "distillation_token": False, "num_register_tokens": 0, "no_embed_class": False,
             "pre_norm": False, "qk_norm": False, "proj_bias": True, "final_norm": True, "act": "gelu",
             "pool_include_prefix": False, "rope": False}
    return family_kwargs(c, "Beit", fixed, ("avg", "token"), swiglu_mlp=c.swiglu, scale_mlp=c.mlp_norm,
                         use_abs_pos_emb=c.pos_embed, use_rel_pos_bias=True, use_fc_norm=c.fc_norm)
