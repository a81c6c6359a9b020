"""Token layout of ViT attention: prefix tokens first, then the patch grid in row-major order.

The model returns attention shaped `[batch, layers, heads, tokens, tokens]` (post-softmax,
rows = queries, columns = keys), with `tokens = num_prefix_tokens + rows * cols`; the prefix
tokens are class, distillation and registers, in that order. Every function here accepts any
leading dims `[..., tokens, tokens]`.

Index tables that depend only on the layout are built with numpy once per layout and cached,
so that the jitted functions that use them contract with a matmul instead of looping over patches.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import numpy as np


def as_grid(grid: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) as a hashable pair of positive ints (lists from JSON become tuples)."""
    rows, cols = (int(g) for g in grid)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"grid must be two positive ints (rows, cols), got {tuple(grid)}")
    return rows, cols


def check_tokens(shape: Sequence[int], grid: Sequence[int], num_prefix_tokens: int) -> int:
    """Check that attention of `shape` `[..., tokens, tokens]` fits the layout; return the patch count."""
    rows, cols = as_grid(grid)
    if num_prefix_tokens < 0:
        raise ValueError(f"num_prefix_tokens must be >= 0, got {num_prefix_tokens}")
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"attention must be [..., tokens, tokens], got shape {tuple(shape)}")
    expected = num_prefix_tokens + rows * cols
    if shape[-1] != expected:
        raise ValueError(f"attention has {shape[-1]} tokens but num_prefix_tokens={num_prefix_tokens} "
                         f"+ grid {rows}x{cols} makes {expected}")
    return rows * cols


def patch_block(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int) -> jnp.ndarray:
    """The patch->patch block `[..., patches, patches]` in float32 (prefix rows and columns dropped).

    Computing in float32 whatever the model ran in keeps sums over 196 keys of ~1/197 accurate.
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    return jnp.asarray(attention)[..., num_prefix_tokens:, num_prefix_tokens:].astype(jnp.float32)


@functools.lru_cache(maxsize=32)
def patch_coordinates(grid: tuple[int, int]) -> np.ndarray:
    """(row, col) of every patch in token order, int `[patches, 2]`."""
    rows, cols = as_grid(grid)
    r, c = np.divmod(np.arange(rows * cols), cols)
    coords = np.stack([r, c], axis=-1)
    coords.flags.writeable = False  # cached and shared: nobody may edit it in place
    return coords


@functools.lru_cache(maxsize=32)
def patch_offsets(grid: tuple[int, int]) -> np.ndarray:
    """Key minus query position (drow, dcol) for every (query, key) patch pair, int `[patches, patches, 2]`."""
    coords = patch_coordinates(as_grid(grid))
    offsets = coords[None, :, :] - coords[:, None, :]
    offsets.flags.writeable = False
    return offsets
