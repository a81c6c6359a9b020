"""timm's `Beit` -> `ViTConfig`, and its state-dict names -> the `VisionTransformer` names that
`converters.timm_names` maps onto ours.

BEiT is a ViT with a relative position bias in every block (`ViTConfig.rel_pos_bias`), layer
scale as `gamma_1`/`gamma_2` parameters (ours: `ls1.gamma`/`ls2.gamma`) and query and value
biases without a key bias (ours: one `qkv` bias whose key part is zero)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np



def is_beit_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """Whether the keys are timm `Beit`'s (`gamma_1`, `attn.q_bias`)."""
    return any(k.endswith((".gamma_1", ".attn.q_bias")) for k in state_dict)


def from_beit_names(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`Beit` keys -> `VisionTransformer` keys: `blocks.i.gamma_1`/`gamma_2` -> `ls1.gamma`/
    `ls2.gamma`; `attn.q_bias` and `attn.v_bias` -> one `attn.qkv.bias` with a zero key part."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".gamma_1") or key.endswith(".gamma_2"):
            out[key[:-len("gamma_1")] + ("ls1.gamma" if key.endswith("1") else "ls2.gamma")] = value
        elif key.endswith(".attn.q_bias"):
            stem = key[:-len("q_bias")]
            v_bias = state_dict.get(stem + "v_bias")
            out[stem + "qkv.bias"] = (value if v_bias is None else
                                      np.concatenate([value, np.zeros_like(value), v_bias]))
        elif not key.endswith(".attn.v_bias"):
            out[key] = value
    return out


def beit_fields(model: Any, refuse: Any) -> dict[str, Any]:
    """The block and pooling `ViTConfig` fields of a timm `Beit` (`converters.timm_config`
    reads the embedding, norms, activation and preprocessing as for any timm ViT); refuses
    what `vit_jax_va.ViT` does not compute, by name."""
    import torch.nn as nn
    from timm.layers import Mlp

    if model.rel_pos_bias is not None:
        refuse("a relative position bias shared by all blocks (use_shared_rel_pos_bias)")
    blocks = list(model.blocks)
    first = blocks[0]
    for i, block in enumerate(blocks):
        attn = block.attn
        if type(block.mlp) is not Mlp or not isinstance(block.mlp.norm, nn.Identity):
            refuse(f"blocks.{i}.mlp {type(block.mlp).__name__} (swiglu_mlp / scale_mlp)")
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
    return dict(
        mlp_ratio=first.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=first.attn.q_bias is not None, proj_bias=True,
        rel_pos_bias=table is not None, class_token=True, pos_embed=model.pos_embed is not None,
        final_norm=True, fc_norm=not isinstance(model.fc_norm, nn.Identity), pool=model.global_pool,
        layer_scale=first.gamma_1 is not None, num_heads=first.attn.num_heads, depth=len(blocks))

