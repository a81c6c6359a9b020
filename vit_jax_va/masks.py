"""Head masks and the paper's six partial-pruning modes (METHOD.md section 1, B2).

The token axis splits into prefix tokens (class, distillation, registers: the paper's "CLS")
and patches, so each head's attention matrix (rows: queries, columns: keys) has four blocks.
A *region* is the part of that matrix a mode zeroes:

==========  =====================================================  ==========================
mode        zeroes                                                 paper's glyph
==========  =====================================================  ==========================
none        nothing                                                1 (empty)
head        the whole matrix (= pruning the head)                  2 (all hatched)
cls         the CLS rows and the CLS columns                       3 (top row + left column)
patch       the patch -> patch block                               4 (bottom-right block)
cross       CLS -> patch and patch -> CLS blocks, not CLS -> CLS   5 (row + column, no corner)
cls_cls     the CLS -> CLS cell(s) only                            6 (top-left corner)
==========  =====================================================  ==========================

With more than one prefix token, "CLS" means all prefix tokens. Masks multiply the
post-softmax attention (1 keeps, 0 prunes) and are not renormalised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_va.config import ViTConfig

PRUNE_MODES = ("none", "head", "cls", "patch", "cross", "cls_cls")


def prune_region(prune_mode: str, num_tokens: int, num_prefix_tokens: int) -> np.ndarray:
    """The region a mode zeroes, as a bool `[T, T]` (True = zeroed; rows queries, cols keys)."""
    if prune_mode not in PRUNE_MODES:
        raise ValueError(f"unknown prune_mode {prune_mode!r}; known: {PRUNE_MODES}")
    is_prefix = np.arange(num_tokens) < num_prefix_tokens
    q_prefix, k_prefix = is_prefix[:, None], is_prefix[None, :]
    region = {
        "none": np.zeros((num_tokens, num_tokens), bool),
        "head": np.ones((num_tokens, num_tokens), bool),
        "cls": q_prefix | k_prefix,
        "patch": ~q_prefix & ~k_prefix,
        "cross": q_prefix ^ k_prefix,
        "cls_cls": q_prefix & k_prefix,
    }[prune_mode]
    return np.broadcast_to(region, (num_tokens, num_tokens)).copy()


def region_masks(config: ViTConfig, modes: tuple[str, ...] = PRUNE_MODES) -> jax.Array:
    """One keep-mask per mode: float32 `[modes, T, T]` (0 inside the region, 1 elsewhere)."""
    return jnp.asarray(np.stack([~prune_region(m, config.num_tokens, config.num_prefix_tokens)
                                 for m in modes]).astype(np.float32))


def single_head_region_mask(config: ViTConfig, layer: int, head: int, prune_mode: str) -> jax.Array:
    """A `[L, H, T, T]` region mask that applies `prune_mode` to one head and keeps the rest."""
    _check_head(config, layer, head)
    keep = region_masks(config, (prune_mode,))[0]
    full = jnp.ones((config.depth, config.num_heads, config.num_tokens, config.num_tokens),
                    jnp.float32)
    return full.at[layer, head].set(keep)


def single_head_mask(config: ViTConfig, layer: int, head: int, value: float = 0.0) -> jax.Array:
    """A `[L, H]` head mask of ones with `value` at (layer, head)."""
    _check_head(config, layer, head)
    return jnp.ones((config.depth, config.num_heads), jnp.float32).at[layer, head].set(value)


def _check_head(config: ViTConfig, layer: int, head: int) -> None:
    if not (0 <= layer < config.depth and 0 <= head < config.num_heads):
        raise IndexError(f"head (layer={layer}, head={head}) is outside "
                         f"[0, {config.depth}) x [0, {config.num_heads})")
