"""Relative and rotary position schemes: static tables computed from the patch grid.

Neither is state: a model at another grid gets its own table from the same function, and the
tables are the same numbers the source library computes (BEiT's relative position index, timm's
`RotaryEmbeddingCat` for EVA-02). Both are lru-cached numpy arrays, so that jit sees constants.

Shapes: N patches (rows * cols, row-major), D head dim, T tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.lru_cache(maxsize=16)
def relative_position_index(grid: tuple[int, int], class_token: bool = True) -> np.ndarray:
    """BEiT's `[T, T]` index into the relative position bias table (`relative_table_size`
    entries): patch pairs by their (row, col) offset; with the class token (first, T = 1 + rows *
    cols) one entry each for class -> patch (row 0), patch -> class (column 0) and class ->
    class. Without it (timm's `vit_relpos_*` without class token) T = rows * cols."""
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    offsets = (r[:, None] - r[None, :] + rows - 1) * (2 * cols - 1) + (c[:, None] - c[None, :] + cols - 1)
    if not class_token:
        return offsets.astype(np.int32)
    size = (2 * rows - 1) * (2 * cols - 1)
    index = np.empty((rows * cols + 1,) * 2, np.int32)
    index[1:, 1:] = offsets
    index[0, :] = size
    index[:, 0] = size + 1
    index[0, 0] = size + 2
    return index


def relative_table_size(grid: tuple[int, int], class_token: bool = True) -> int:
    """Entries of a relative position bias table for `grid`: one per (row, col) offset, plus
    three for the class token."""
    rows, cols = grid
    return (2 * rows - 1) * (2 * cols - 1) + 3 * int(class_token)


@functools.lru_cache(maxsize=16)
def rotary_embedding(grid: tuple[int, int], head_dim: int, *, ref_grid: tuple[int, int] | None = None,
                     temperature: float = 10000.0, offset: float = 0.0, xy: bool = False,
                     rotate_half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """EVA-02's axial rotary position embedding (timm `RotaryEmbeddingCat`, `in_pixels=False`):
    (sin, cos), each float32 `[N, D]`.

    A patch at (row, col) has coordinates row + offset and col + offset, rescaled to the
    reference grid (`ref_grid`, the pre-training grid: coordinate * ref / size, EVA's scheme for
    other resolutions), in (row, col) order or (col, row) with `xy`. Each coordinate turns D/4
    frequencies 1 / temperature^(i / (D/4)); the D/2 angles (first coordinate's, then the
    second's) are laid out interleaved `[a0, a0, a1, a1, ...]` or, with `rotate_half`, as
    `[a0, a1, ..., a0, a1, ...]`, matching `rotate`.
    """
    rows, cols = grid
    if head_dim % 4:
        raise ValueError(f"rotary position embedding needs a head dim divisible by 4; got {head_dim}")
    num_bands = head_dim // 4
    bands = (np.float32(1.0) / np.float32(temperature) ** (np.arange(num_bands, dtype=np.float32)
                                                            / np.float32(num_bands))).astype(np.float32)
    axes = [np.arange(rows, dtype=np.float32) + np.float32(offset),
            np.arange(cols, dtype=np.float32) + np.float32(offset)]
    if ref_grid is not None:
        axes = [a / np.float32(size) * np.float32(ref) for a, size, ref in zip(axes, grid, ref_grid)]
    row_coord, col_coord = np.meshgrid(*axes, indexing="ij")  # [rows, cols] each
    coords = np.stack([col_coord, row_coord] if xy else [row_coord, col_coord], axis=-1)
    angles = (coords[..., None] * bands).reshape(rows * cols, 2 * num_bands)  # [N, D/2]
    layout = (lambda a: np.concatenate([a, a], -1)) if rotate_half else (lambda a: np.repeat(a, 2, -1))
    return layout(np.sin(angles)).astype(np.float32), layout(np.cos(angles)).astype(np.float32)


def rotate(x: jax.Array, sin: jax.Array, cos: jax.Array, rotate_half: bool = False) -> jax.Array:
    """Rotary embedding applied to `x` `[..., N, D]` with `sin`, `cos` `[N, D]`: x cos + r(x) sin,
    where r turns each pair (x0, x1) into (-x1, x0): adjacent pairs, or with `rotate_half` the
    pairs (x_i, x_{i + D/2})."""
    lead = (1,) * (x.ndim - 2)
    sin, cos = sin.reshape(*lead, *sin.shape), cos.reshape(*lead, *cos.shape)
    if rotate_half:
        first, second = jnp.split(x, 2, axis=-1)
        turned = jnp.concatenate([-second, first], axis=-1)
    else:
        turned = jnp.stack([-x[..., 1::2], x[..., ::2]], axis=-1).reshape(x.shape)
    return x * cos + turned * sin
