"""Attention patterns (paper panel D): the items the pattern autoencoder learns, and the 2-D map.

Two kinds of pattern item per (image, head):

* the *re-centred patch map* `[2 rows - 1, 2 cols - 1]` (`recentred_map`): every query patch's
  attention over the key patches, shifted so the query sits at the centre, averaged over query
  patches. Self-attention is a centre dot, "look left" a dot left of centre, "look along the
  row" a horizontal line, global attention a flat field;
* the *CLS maps* `[2, rows, cols]` (`cls_maps`): where the class token looks, and how much each
  patch looks at the class token.

Centre index (rows - 1, cols - 1) of a re-centred map is offset (0, 0); index (i, j) is the
key at offset (drow, dcol) = (i - rows + 1, j - cols + 1) from the query.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_va.layout import as_grid, check_tokens, patch_block

CLS_ROW, CLS_COLUMN = 0, 1  # channels of `cls_maps`


@functools.lru_cache(maxsize=32)
def _shift_tables(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot offset tables, float32 `[rows, rows, 2 rows - 1]` and `[cols, cols, 2 cols - 1]`.

    Entry (query, key, offset) is 1 when key - query = offset - (n - 1). The offset of a patch
    pair splits into a row part and a column part, so two small tables replace one
    `[patches, patches, offsets]` scatter index (112 MB for a 14 x 14 grid).
    """
    tables = []
    for n in grid:
        q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        tables.append((k - q + n - 1)[:, :, None] == np.arange(2 * n - 1))
    return tables[0].astype(np.float32), tables[1].astype(np.float32)


def offset_counts(grid: Sequence[int]) -> np.ndarray:
    """How many query patches have a key patch at each offset, int `[2 rows - 1, 2 cols - 1]`.

    (rows - |drow|) * (cols - |dcol|); `recentred_map(...) * offset_counts(grid) / patches`
    turns the per-offset mean into the mean over all query patches.
    """
    rows, cols = as_grid(grid)
    reach_rows = rows - np.abs(np.arange(2 * rows - 1) - rows + 1)
    reach_cols = cols - np.abs(np.arange(2 * cols - 1) - cols + 1)
    return np.outer(reach_rows, reach_cols)


def recentred_map(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int) -> jnp.ndarray:
    """The re-centred patch map: mean attention a query patch gives to the key at each offset.

    Each offset is averaged over the query patches that *can* reach it (the count is
    `offset_counts`), not over all query patches: uniform attention over T tokens is then a
    flat field of 1/T, as the paper describes global heads, rather than a pyramid that only
    reflects the grid's border. Prefix rows and columns are left out; no renormalisation.

    Args:
      attention: post-softmax `[..., tokens, tokens]`, e.g. `[batch, layers, heads, tokens, tokens]`.
      grid: patch grid (rows, cols).
      num_prefix_tokens: tokens before the patches (class, distillation, registers).
    Returns:
      `[..., 2 rows - 1, 2 cols - 1]` float32 attention weight; the centre is the query.
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    return _recentred_map(attention, as_grid(grid), int(num_prefix_tokens))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _recentred_map(attention, grid, num_prefix_tokens):
    row_table, col_table = _shift_tables(grid)
    # The reach of an offset factorises too, (rows - |drow|) * (cols - |dcol|), and each factor
    # is the number of (query, key) pairs a table holds for that offset.
    row_table = row_table / row_table.sum(axis=(0, 1), keepdims=True)
    col_table = col_table / col_table.sum(axis=(0, 1), keepdims=True)
    patches = patch_block(attention, grid, num_prefix_tokens)
    patches = patches.reshape(*patches.shape[:-2], grid[0], grid[1], grid[0], grid[1])
    return jnp.einsum("...abcd,acx,bdy->...xy", patches, row_table, col_table)


def recentred_query_maps(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int) -> jnp.ndarray:
    """Every query patch's own re-centred map (for the detail views of one selected image).

    Args:
      attention: post-softmax `[..., tokens, tokens]`; pass one image (`[layers, heads, ...]` or
        a single head) since the result is `2 rows * 2 cols` times larger than the input.
    Returns:
      `[..., rows, cols, 2 rows - 1, 2 cols - 1]` float32: entry (qr, qc, i, j) is the weight query
      patch (qr, qc) gives to the key at offset (i - rows + 1, j - cols + 1); 0 where that offset
      falls outside the grid.
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    return _recentred_query_maps(attention, as_grid(grid), int(num_prefix_tokens))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _recentred_query_maps(attention, grid, num_prefix_tokens):
    row_table, col_table = _shift_tables(grid)
    patches = patch_block(attention, grid, num_prefix_tokens)
    patches = patches.reshape(*patches.shape[:-2], grid[0], grid[1], grid[0], grid[1])
    return jnp.einsum("...abcd,acx,bdy->...abxy", patches, row_table, col_table)


def cls_maps(attention: jnp.ndarray, grid: Sequence[int], num_prefix_tokens: int,
             token: int = 0) -> jnp.ndarray:
    """The CLS pattern item: the class token's attention over the grid and the grid's attention to it.

    Args:
      attention: post-softmax `[..., tokens, tokens]`.
      token: which prefix token; 0 is the class token (1 the distillation token when present).
    Returns:
      `[..., 2, rows, cols]` float32 attention weight. Channel `CLS_ROW` (0): the token's row over
      the patch keys (where it looks). Channel `CLS_COLUMN` (1): its column over the patch
      queries (how much each patch looks at it).
    """
    check_tokens(attention.shape, grid, num_prefix_tokens)
    if not 0 <= token < num_prefix_tokens:
        raise ValueError(f"token {token} is not a prefix token (num_prefix_tokens={num_prefix_tokens})")
    rows, cols = as_grid(grid)
    attention = jnp.asarray(attention).astype(jnp.float32)
    row = attention[..., token, num_prefix_tokens:]
    column = attention[..., num_prefix_tokens:, token]
    return jnp.stack([row, column], axis=-2).reshape(*attention.shape[:-2], 2, rows, cols)


PROJECTIONS = ("tsne", "umap", "pca")


@dataclasses.dataclass
class PatternSpace:
    """The 2-D pattern map of one item set (patch patterns or CLS patterns; paper D1).

    Attributes:
      latents: `[items, latent_dim]` autoencoder latents.
      xy: `[items, 2]` their 2-D projection (arbitrary units).
      labels: `[items]` k-means cluster of each item (clustered in latent space, not in 2-D,
        so the clusters do not depend on the projection's distortions).
      prototypes: `[clusters, *item_shape]` decoded cluster centroids, normalised units.
      medoids: `[clusters]` index of the item nearest each centroid in latent space.
      head_index: `[items]` flat head index (layer * heads + head) of each item.
      head_xy: `[heads, 2]` mean position of each head's items (NaN for a head without items).
      head_shares: `[heads, clusters]` fraction of each head's items in each cluster (NaN likewise).
    """

    latents: np.ndarray
    xy: np.ndarray
    labels: np.ndarray
    prototypes: np.ndarray
    medoids: np.ndarray
    head_index: np.ndarray
    head_xy: np.ndarray
    head_shares: np.ndarray

    def save(self, path) -> None:
        """Write every field to one `.npz` file."""
        np.savez(path, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path) -> "PatternSpace":
        with np.load(path) as data:
            return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def project_2d(points: np.ndarray, projection: str = "tsne", seed: int = 0) -> np.ndarray:
    """Project points `[n, dims]` to `[n, 2]` float64 with t-SNE, UMAP (if installed) or PCA.

    The one 2-D projection of the package (pattern maps, the image overview). t-SNE runs on
    the first 50 principal components when there are more dims, and falls back to PCA for
    fewer than 5 points (its perplexity needs more); fewer than 2 points sit at the origin.
    """
    points = np.asarray(points, dtype=np.float64)
    n = len(points)
    if projection not in PROJECTIONS:
        raise ValueError(f"unknown projection {projection!r}; known: {PROJECTIONS}")
    if n < 2:
        return np.zeros((n, 2))
    if projection == "pca" or (projection == "tsne" and n < 5):
        from sklearn.decomposition import PCA

        padded = np.pad(points, ((0, 0), (0, max(0, 2 - points.shape[1]))))
        return PCA(2, random_state=seed).fit_transform(padded)
    if projection == "umap":
        try:
            import umap
        except ImportError:
            raise ImportError("projection='umap' needs umap-learn (pip install umap-learn); "
                              "'tsne' and 'pca' need only scikit-learn") from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(points)
    from sklearn.manifold import TSNE

    if points.shape[1] > 50:
        from sklearn.decomposition import PCA

        points = PCA(min(50, n), random_state=seed).fit_transform(points)
    perplexity = min(30.0, (n - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def pattern_space(model, items: np.ndarray, head_index: np.ndarray, *, num_heads: int | None = None,
                  n_clusters: int = 8, projection: str = "tsne", seed: int = 0) -> PatternSpace:
    """Encode pattern items, project them to 2-D, cluster them and place every head.

    Args:
      model: a trained `vit_jax_va.autoencoder.PatternAutoencoder`.
      items: raw pattern items `[items, *item_shape]` (all of one kind: patch or CLS patterns).
      head_index: `[items]` flat head index (layer * heads + head) of each item.
      num_heads: total heads (layers * heads); default: the largest index + 1.
    """
    from sklearn.cluster import KMeans

    from vit_jax_va.autoencoder import encode_items

    head_index = np.asarray(head_index, dtype=np.int64)
    if head_index.shape != (len(items),):
        raise ValueError(f"head_index has shape {head_index.shape}, expected ({len(items)},)")
    num_heads = int(head_index.max()) + 1 if num_heads is None else num_heads
    latents = encode_items(model, items)
    xy = project_2d(latents, projection, seed)
    kmeans = KMeans(n_clusters, n_init=10, random_state=seed).fit(latents)
    labels = kmeans.labels_.astype(np.int64)
    centroids = kmeans.cluster_centers_.astype(np.float32)
    prototypes = np.asarray(model.decode(jnp.asarray(centroids)))
    medoids = np.argmin(((latents[None, :, :] - centroids[:, None, :]) ** 2).sum(-1), axis=1)

    onehot_heads = (head_index[:, None] == np.arange(num_heads)).astype(np.float64)  # [items, heads]
    per_head = onehot_heads.sum(axis=0)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        head_xy = onehot_heads.T @ xy / per_head
        head_shares = onehot_heads.T @ (labels[:, None] == np.arange(n_clusters)) / per_head
    return PatternSpace(latents=latents, xy=xy, labels=labels, prototypes=prototypes, medoids=medoids,
                        head_index=head_index, head_xy=head_xy, head_shares=head_shares)
