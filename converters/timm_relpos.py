"""timm's `VisionTransformerRelPos` (`vit_relpos_*`, `vit_srelpos_*`) -> `ViTConfig` fields and
weights.

Each block adds a relative position bias to its attention logits, as BEiT does
(`ViTConfig.rel_pos_bias`): either a learned table per (row, col) offset (`RelPosBias`), or a
small MLP of log-spaced offsets (`RelPosMlp`), which is a fixed function of the grid, so its
output at the model's grid is read as the table. Either way the table is read off the module's
own bias (`get_bias`), checked to be a function of the offset alone. Without a class token
there are no prefix tokens; with one, it gets three entries (zero for `RelPosMlp`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vit_jax_va.positions import relative_position_index


def is_relpos(model: Any) -> bool:
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    return isinstance(model, VisionTransformerRelPos)


def relpos_fields(model: Any, refuse: Any) -> dict[str, Any]:
    """The block, position and pooling `ViTConfig` fields of a timm `VisionTransformerRelPos`
    (`converters.timm_config` reads its embedding, norms, MLP and preprocessing); refuses what
    `vit_jax_va.ViT` does not compute, by name."""
    import torch.nn as nn
    from timm.layers import LayerScale
    from timm.models.vision_transformer_relpos import RelPosAttention, RelPosBlock

    if model.shared_rel_pos is not None:
        refuse("a relative position bias shared by all blocks (shared_rel_pos)")
    blocks = list(model.blocks)
    first = blocks[0]
    for i, block in enumerate(blocks):
        where = f"blocks.{i}"
        if type(block) is not RelPosBlock:
            refuse(f"{where} block type {type(block).__name__} (res-post-norm blocks)")
        attn = block.attn
        if type(attn) is not RelPosAttention or attn.rel_pos is None:
            refuse(f"{where}.attn without its own relative position bias")
        if tuple(attn.rel_pos.window_size) != tuple(model.patch_embed.grid_size):
            refuse(f"{where}.attn a relative position window other than the patch grid")
        for name in ("q_norm", "k_norm"):
            norm = getattr(attn, name)
            if isinstance(norm, nn.Identity) != isinstance(first.attn.q_norm, nn.Identity):
                refuse(f"{where}.attn qk_norm differing from blocks.0")
            if not isinstance(norm, nn.Identity) and (
                    not isinstance(norm, nn.LayerNorm) or norm.eps != first.norm1.eps):
                refuse(f"{where}.attn.{name} other than a LayerNorm with the blocks' eps")
        for name in ("ls1", "ls2"):
            scale = getattr(block, name)
            if not isinstance(scale, (LayerScale, nn.Identity)) or type(scale) is not type(first.ls1):
                refuse(f"{where}.{name} type {type(scale).__name__} differing from blocks.0.ls1")
        if (attn.qkv.bias is None) != (first.attn.qkv.bias is None) or attn.num_heads != first.attn.num_heads:
            refuse(f"{where}: heads or qkv bias differing from blocks.0")
    if model.global_pool not in ("avg", "token"):
        refuse(f"global_pool={model.global_pool!r}")
    fc_norm = not isinstance(model.fc_norm, nn.Identity)
    return dict(depth=len(blocks), num_heads=first.attn.num_heads, qkv_bias=first.attn.qkv.bias is not None,
                qk_norm=not isinstance(first.attn.q_norm, nn.Identity), rel_pos_bias=True,
                class_token=model.cls_token is not None, pos_embed=False, final_norm=True, fc_norm=fc_norm,
                pool=model.global_pool, layer_scale=isinstance(first.ls1, LayerScale))


def relpos_state_dict(model: Any, refuse: Any) -> dict[str, np.ndarray]:
    """The module's state dict (numpy) with each block's `attn.rel_pos` replaced by our
    `attn.relative_position_bias_table` `[entries, heads]`, read off its bias."""
    import torch

    from converters.torch_files import numpy_state_dict

    grid = tuple(model.patch_embed.grid_size)
    index = relative_position_index(grid, model.cls_token is not None)
    out = {k: v for k, v in numpy_state_dict(model.state_dict()).items() if ".attn.rel_pos." not in k}
    for i, block in enumerate(model.blocks):
        with torch.no_grad():
            bias = block.attn.rel_pos.get_bias()[0].float().numpy()  # [H, T, T]
        table = np.zeros((int(index.max()) + 1, bias.shape[0]), np.float32)
        table[index.ravel()] = bias.reshape(bias.shape[0], -1).T
        if not np.array_equal(table[index].transpose(2, 0, 1), bias):
            refuse(f"blocks.{i}.attn.rel_pos: a bias that is not a function of the (row, col) offset")
        out[f"blocks.{i}.attn.relative_position_bias_table"] = table
    return out


def relpos_kwargs(config: Any) -> dict[str, Any]:
    """timm `VisionTransformerRelPos` constructor kwargs (a learned table, `rel_pos_type='bias'`)
    for a `ViTConfig` with a relative position bias; a setting it cannot take is refused by
    name (ValueError)."""
    from converters.timm_write import family_kwargs

    c = config
    fixed = {"distillation_token": False, "num_register_tokens": 0, "pos_embed": False, "pre_norm": False,
             "proj_bias": True, "final_norm": True, "swiglu": False, "mlp_norm": False, "rope": False,
             "pool_include_prefix": False}
    return family_kwargs(c, "VisionTransformerRelPos", fixed, ("avg", "token"), qk_norm=c.qk_norm,
                         class_token=c.class_token, fc_norm=c.fc_norm, rel_pos_type="bias",
                         act_layer=None if c.act == "gelu" else c.act)
