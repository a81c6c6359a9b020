"""Images in chunks of a fixed size, so that a jitted computation over any number of images
compiles once.

`chunks` yields the chunks with the last one padded up to the chunk size (`fitted_size` keeps
a few images from being padded up to a large one); `map_chunks` runs a
function over them and joins its outputs along each output's image axis with the padding
dropped. Every batched computation of the package (`ablate_heads`, `taylor_importance`,
`head_confidence_per_image`, `pruning_curve`, the sweep's attention statistics) goes through
them.

Shapes: N images, B the chunk size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np


def pad(array: np.ndarray, size: int, fill: Any = 0) -> np.ndarray:
    """`array` `[n, ...]` with its leading axis filled up to `size` with `fill`."""
    missing = size - array.shape[0]
    if missing <= 0:
        return array
    return np.concatenate([array, np.full((missing, *array.shape[1:]), fill, array.dtype)])


def bounds(n: int, size: int) -> list[tuple[int, int]]:
    """`[start, stop)` of each chunk of `size` of `n` items (the last one may be shorter)."""
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def chunks(arrays: Sequence[np.ndarray], size: int, fills: Sequence[Any] | None = None
           ) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """`(start, stop, padded)` per chunk: `padded` holds each array's rows `[start, stop)`,
    filled up to `size` rows with its fill (default 0; e.g. -1 for "no label")."""
    n = len(arrays[0])
    fills = [0] * len(arrays) if fills is None else list(fills)
    for start, stop in bounds(n, size):
        yield start, stop, [pad(a[start:stop], size, f) for a, f in zip(arrays, fills)]


def to_host(value: Any) -> np.ndarray:
    """A result as a numpy array; one sharded over several processes' devices (a mesh that
    spans hosts) is gathered from all of them first."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def fitted_size(n: int, size: int) -> int:
    """The chunk size for `n` images at most `size` per call: `size`, or for fewer images the
    smallest power of two >= n (a few images are not padded up to a large chunk, e.g. 2 to 16:
    8x the work of a big model; powers of two bound the shapes compiled to log2(size))."""
    if n >= size:
        return size
    return min(size, 1 << max(0, n - 1).bit_length())


def map_chunks(fn: Callable[..., Any], arrays: Sequence[np.ndarray], size: int, *,
               fills: Sequence[Any] | None = None, image_axes: Any = 0,
               place: Callable[[list[np.ndarray]], list[Any]] | None = None) -> Any:
    """`fn(*chunk)` over the padded chunks of `arrays`, joined.

    Args:
      fn: takes one padded chunk of every array (`[B, ...]` each) and returns a pytree of
        arrays that each have an image axis of length B.
      arrays: `[N, ...]` each, the same N.
      size: B, images per call.
      fills: the padding value of each array.
      image_axes: where the image axis of each output is: an int for all, or a pytree prefix
        of the output (e.g. `{"prob": 3, "reference": 0}`).
      place: puts a padded chunk on devices before the call (e.g. sharded over a mesh).
    Returns:
      the outputs of every chunk joined along their image axes, `N` long, as numpy arrays.
    """
    parts: list[Any] = []
    axes = None
    for start, stop, padded in chunks(arrays, size, fills):
        out = fn(*(padded if place is None else place(padded)))
        if axes is None:
            axes = (jax.tree.map(lambda _: image_axes, out) if isinstance(image_axes, int)
                    else image_axes)
        kept = np.arange(stop - start)
        parts.append(jax.tree.map(lambda axis, v: np.take(to_host(v), kept, axis=axis), axes, out))
    if not parts:
        raise ValueError("no images to compute on")
    return jax.tree.map(lambda axis, *vs: np.concatenate(vs, axis=axis), axes, *parts)


# Bytes of the widest activation ([variants, B, T, hidden] float32) of one vectorised chunk of
# pruned passes. Larger chunks were slower on a 2-core CPU (vit_tiny, 16 images, an earlier
# layout of the same sweep: 4 variants ~5 s, 36 variants ~10 s), presumably because a chunk
# then no longer fits the 32 MB L3 cache.
_VARIANT_MEMORY_BUDGET = 48 * 2**20


def variant_chunk(config, batch_size: int, num_variants: int) -> int:
    """Masked passes (pruning variants, curve steps) vectorised together in one call: the
    largest divisor of `num_variants` whose widest activation `[variants, B, T, widest]` fits
    `_VARIANT_MEMORY_BUDGET` (a divisor, because `lax.map` traces and compiles a second copy
    of its body for a remainder). `config` is the model's `ViTConfig`."""
    c = config
    widest = max(c.mlp_hidden, 3 * c.width, c.num_heads * c.num_tokens)
    fits = max(1, _VARIANT_MEMORY_BUDGET // (4 * batch_size * c.num_tokens * widest))
    return max(d for d in range(1, num_variants + 1) if num_variants % d == 0 and d <= fits)
