"""timm's names and layouts <-> ours: one function maps names, one transforms values.

Our parameter names mirror timm's, except that Flax calls a linear or conv weight `kernel`
(stored transposed: `[in, out]`, conv `[kh, kw, in, out]`) and a LayerNorm weight `scale`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def timm_key(path: tuple[Any, ...]) -> str:
    """Our parameter path -> timm state-dict key, e.g. ('blocks', 0, 'attn', 'qkv', 'kernel')
    -> 'blocks.0.attn.qkv.weight'."""
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])


def to_ours(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    """A timm tensor -> our layout (torch linear `[out, in]` -> `[in, out]`; conv
    `[out, in, kh, kw]` -> `[kh, kw, in, out]`)."""
    if path[-1] == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def to_torch_layout(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    """Inverse of `to_ours`."""
    if path[-1] == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def timm_layout(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The timm shape of our parameter at `path` with our `shape`."""
    return to_torch_layout(path, np.empty(shape, np.uint8)).shape
