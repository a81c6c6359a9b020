"""Attention strength: how strongly a patch attends to its spatial neighbours (paper panel C).

All functions take post-softmax attention `[..., tokens, tokens]` (typically
`[batch, layers, heads, tokens, tokens]`, see `vit_jax_va.layout`) and return one value per
leading index (per image and head). Prefix tokens (class, distillation, registers) are left out
of the spatial statistics; `cls_share` measures what goes to them instead.

The *n-hop ring* d of a query patch holds the patches at Chebyshev distance
d = max(|drow|, |dcol|), d = 0 .. max(rows, cols) - 1, clipped at the image border.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_va.layout import as_grid, check_tokens, patch_block, patch_offsets

STATISTICS = ("entropy", "mean_distance", "cls_share", "confidence")


def num_rings(grid: Sequence[int]) -> int:
    """Number of hop rings, max(rows, cols): the length of a `hop_profile`."""
    return max(as_grid(grid))


@functools.lru_cache(maxsize=32)
def _hop_weights(grid: tuple[int, int]) -> np.ndarray:
    """`[patches * patches, rings]` such that flat attention @ weights = hop profile.

    Entry ((q, k), d) = [k in ring d of q] / (|ring d of q| * #queries that have a ring d),
    which folds "mean over the ring" and "mean over queries having the ring" into one matmul.
    """
    offsets = patch_offsets(grid)
    hops = np.abs(offsets).max(axis=-1)
    in_ring = hops[:, :, None] == np.arange(num_rings(grid))  # [q, k, d]
    ring_size = in_ring.sum(axis=1)  # [q, d]
    queries_with_ring = (ring_size > 0).sum(axis=0)  # [d], >= 1: a corner query reaches every d
    per_query = np.divide(1.0, ring_size, out=np.zeros(ring_size.shape), where=ring_size > 0)
    weights = in_ring * (per_query / queries_with_ring)[:, None, :]
    return weights.reshape(-1, weights.shape[-1]).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _patch_distances(grid: tuple[int, int], patch_size: tuple[int, int]) -> np.ndarray:
    """Euclidean distance in pixels between patch centres, float32 `[patches, patches]`."""
    offsets = patch_offsets(grid) * np.asarray(patch_size)
    return np.sqrt((offsets.astype(np.float64) ** 2).sum(axis=-1)).astype(np.float32)


def hop_profile(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int) -> jnp.ndarray:
    """Strength at hop d: mean attention weight a query patch gives to a patch of its ring d.

    Per query patch, the mean weight over the (border-clipped) ring d; then the mean over the
    query patches that have a ring d. Prefix query rows and key columns are left out and the
    weights are not renormalised, so uniform attention over T tokens gives 1/T at every d.

    Args:
      attention: post-softmax `[..., tokens, tokens]`, e.g. `[batch, layers, heads, tokens, tokens]`.
      grid: patch grid (rows, cols).
      num_prefix_tokens: tokens before the patches (class, distillation, registers).
    Returns:
      `[..., rings]` float32 with rings = max(rows, cols); attention weight per key patch.
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    return _hop_profile(attention, as_grid(grid), int(num_prefix_tokens))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _hop_profile(attention, grid, num_prefix_tokens):
    patches = patch_block(attention, grid, num_prefix_tokens)
    flat = patches.reshape(*patches.shape[:-2], -1)
    return flat @ jnp.asarray(_hop_weights(grid))


@jax.jit
def head_entropy(profile: jnp.ndarray) -> jnp.ndarray:
    """Shannon entropy (natural log) of a hop profile normalised to sum 1.

    Args:
      profile: `[..., rings]`, as returned by `hop_profile`.
    Returns:
      `[...]` in nats: 0 when all strength sits on one ring, ln(rings) when the profile is flat.
      Empty rings contribute 0 (0 log 0 = 0); an all-zero profile (a fully pruned head) has
      no distribution and gives NaN.
    """
    profile = jnp.asarray(profile, dtype=jnp.float32)
    total = profile.sum(axis=-1, keepdims=True)
    p = profile / jnp.where(total > 0, total, 1.0)
    positive = p > 0
    plogp = jnp.where(positive, p * jnp.log(jnp.where(positive, p, 1.0)), 0.0)
    return jnp.where(total[..., 0] > 0, -plogp.sum(axis=-1), jnp.nan)


def mean_attention_distance(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int,
                            patch_size: Sequence[int], *, renormalise: bool = True) -> jnp.ndarray:
    """Mean attention distance in pixels (Dosovitskiy et al. 2020, fig. 7).

    Per query patch, the attention-weighted Euclidean distance between patch centres; then the
    mean over query patches. With `renormalise=True` (default) each query's weights over the
    key patches are rescaled to sum 1, so the result is an expected distance that does not
    shrink when a head sends most of its mass to the class token (that mass is what
    `cls_share` reports). With `renormalise=False` prefix mass counts as distance 0.

    Args:
      attention: post-softmax `[..., tokens, tokens]`.
      patch_size: (height, width) of a patch in pixels.
    Returns:
      `[...]` float32, pixels. A query giving no weight at all to patches makes it NaN.
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    ph, pw = as_grid(patch_size)
    return _mean_distance(attention, as_grid(grid), int(num_prefix_tokens), (ph, pw), bool(renormalise))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _mean_distance(attention, grid, num_prefix_tokens, patch_size, renormalise):
    patches = patch_block(attention, grid, num_prefix_tokens)
    per_query = jnp.einsum("...qk,qk->...q", patches, jnp.asarray(_patch_distances(grid, patch_size)))
    if renormalise:
        per_query = per_query / patches.sum(axis=-1)
    return per_query.mean(axis=-1)


@functools.partial(jax.jit, static_argnums=(1,))
def cls_share(attention: jnp.ndarray, num_prefix_tokens: int) -> jnp.ndarray:
    """Attention mass the patch queries put on the prefix tokens (class, distillation, registers).

    Args:
      attention: post-softmax `[..., tokens, tokens]`.
    Returns:
      `[...]` float32 in 0..1: per patch query the summed weight on the prefix keys, mean over
      patch queries (0 when there are no prefix tokens).
    """
    attention = jnp.asarray(attention).astype(jnp.float32)
    queries = attention[..., num_prefix_tokens:, :]
    return queries[..., :num_prefix_tokens].sum(axis=-1).mean(axis=-1)


@functools.partial(jax.jit, static_argnums=(1,))
def head_confidence(attention: jnp.ndarray, num_prefix_tokens: int) -> jnp.ndarray:
    """Head confidence (Voita et al. 2019): mean over patch queries of the largest attention weight.

    Prefix query rows are excluded; the maximum runs over all keys, prefix keys included.

    Args:
      attention: post-softmax `[..., tokens, tokens]`.
    Returns:
      `[...]` float32 in 1/tokens .. 1.
    """
    attention = jnp.asarray(attention).astype(jnp.float32)
    return attention[..., num_prefix_tokens:, :].max(axis=-1).mean(axis=-1)


def strength_statistics(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int,
                        patch_size: Sequence[int]) -> dict[str, jnp.ndarray]:
    """Every strength statistic in one jitted pass (what the streaming sweep calls per batch).

    Returns a dict: "profile" `[..., rings]`, and `[...]` arrays "entropy" (nats),
    "mean_distance" (pixels, renormalised), "cls_share" and "confidence" (attention weight).
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    return _statistics(attention, as_grid(grid), int(num_prefix_tokens), as_grid(patch_size))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _statistics(attention, grid, num_prefix_tokens, patch_size):
    profile = _hop_profile(attention, grid, num_prefix_tokens)
    return {"profile": profile,
            "entropy": head_entropy(profile),
            "mean_distance": _mean_distance(attention, grid, num_prefix_tokens, patch_size, True),
            "cls_share": cls_share(attention, num_prefix_tokens),
            "confidence": head_confidence(attention, num_prefix_tokens)}


@dataclasses.dataclass(frozen=True)
class LayerTrend:
    """One statistic per layer, summarised over the heads of the layer; every field is `[layers]`."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray


def layer_trend(statistic: np.ndarray) -> LayerTrend:
    """Local-to-global trend of a per-head statistic (paper C1 as a line).

    Args:
      statistic: `[..., layers, heads]`; leading (image) dims are averaged first, so each head
        contributes its mean over images; NaNs (pruned heads) are ignored.
    """
    per_head = np.asarray(statistic, dtype=np.float64)
    per_head = per_head.reshape(-1, *per_head.shape[-2:])
    per_head = np.nanmean(per_head, axis=0)
    return LayerTrend(mean=np.nanmean(per_head, axis=-1), std=np.nanstd(per_head, axis=-1),
                      min=np.nanmin(per_head, axis=-1), max=np.nanmax(per_head, axis=-1))
