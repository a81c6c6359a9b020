"""Re-centred maps and CLS maps against known patterns and slow loops; the pattern-space plumbing."""

import numpy as np
import pytest
from flax import nnx

from vit_jax_va import patterns
from vit_jax_va.autoencoder import PatternAutoencoder


def rule_attention(grid, prefix, target):
    """Each query patch (r, c) gives weight 1 to the patches target(r, c) lists (split evenly)."""
    rows, cols = grid
    tokens = prefix + rows * cols
    attention = np.zeros((tokens, tokens), np.float32)
    attention[:prefix, 0] = 1.0
    for r in range(rows):
        for c in range(cols):
            keys = [(kr, kc) for kr, kc in target(r, c) if 0 <= kr < rows and 0 <= kc < cols] or [(r, c)]
            for kr, kc in keys:
                attention[prefix + r * cols + c, prefix + kr * cols + kc] += 1.0 / len(keys)
    return attention


def slow_query_maps(attention, grid, prefix):
    rows, cols = grid
    out = np.zeros((*attention.shape[:-2], rows, cols, 2 * rows - 1, 2 * cols - 1))
    for lead in np.ndindex(*attention.shape[:-2]):
        for qr in range(rows):
            for qc in range(cols):
                for kr in range(rows):
                    for kc in range(cols):
                        out[lead + (qr, qc, kr - qr + rows - 1, kc - qc + cols - 1)] = \
                            attention[lead + (prefix + qr * cols + qc, prefix + kr * cols + kc)]
    return out


def slow_recentred_map(attention, grid, prefix):
    rows, cols = grid
    query_maps = slow_query_maps(attention, grid, prefix)
    total = query_maps.sum(axis=(-4, -3))
    reach = np.zeros((2 * rows - 1, 2 * cols - 1))
    for qr in range(rows):
        for qc in range(cols):
            for kr in range(rows):
                for kc in range(cols):
                    reach[kr - qr + rows - 1, kc - qc + cols - 1] += 1
    return total / reach


@pytest.mark.parametrize("grid", [(3, 3), (3, 5)])
@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_recentred_maps_match_slow_loops(grid, prefix):
    tokens = prefix + grid[0] * grid[1]
    attention = np.random.default_rng(0).dirichlet(np.ones(tokens), size=(2, 3, tokens)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(patterns.recentred_map(attention, grid, prefix)),
                               slow_recentred_map(attention, grid, prefix), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(patterns.recentred_query_maps(attention, grid, prefix)),
                               slow_query_maps(attention, grid, prefix), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("grid", [(3, 5), (4, 4)])
def test_left_neighbour_lands_left_of_centre(grid):
    rows, cols = grid
    attention = rule_attention(grid, 1, lambda r, c: [(r, c - 1)])
    recentred = np.asarray(patterns.recentred_map(attention, grid, 1))
    assert np.unravel_index(recentred.argmax(), recentred.shape) == (rows - 1, cols - 2)
    # Every query that has a left neighbour gives it all its weight.
    assert recentred[rows - 1, cols - 2] == pytest.approx(1.0)
    # Only the first column, which has no left neighbour, falls back to itself.
    assert recentred[rows - 1, cols - 1] == pytest.approx(rows / (rows * cols))


def test_row_pattern_is_a_horizontal_line():
    grid = (3, 5)
    attention = rule_attention(grid, 1, lambda r, c: [(r, k) for k in range(5)])
    recentred = np.asarray(patterns.recentred_map(attention, grid, 1))
    np.testing.assert_allclose(recentred[2], 1 / 5, rtol=1e-6)
    np.testing.assert_allclose(np.delete(recentred, 2, axis=0), 0.0)


def test_uniform_attention_is_a_flat_field():
    grid, prefix = (3, 5), 5
    tokens = prefix + 15
    uniform = np.full((tokens, tokens), 1 / tokens, np.float32)
    np.testing.assert_allclose(np.asarray(patterns.recentred_map(uniform, grid, prefix)), 1 / tokens, rtol=1e-5)


def test_offset_counts_convert_to_mean_over_all_queries():
    grid = (3, 5)
    attention = np.random.default_rng(1).dirichlet(np.ones(16), size=16).astype(np.float32)
    per_offset = np.asarray(patterns.recentred_map(attention, grid, 1))
    over_all = per_offset * patterns.offset_counts(grid) / 15
    # Over all queries, the map sums to the mean patch mass per query.
    assert over_all.sum() == pytest.approx(attention[1:, 1:].sum() / 15, rel=1e-5)


@pytest.mark.parametrize("prefix,token", [(1, 0), (5, 0), (5, 2)])
def test_cls_maps_read_the_token_row_and_column(prefix, token):
    grid = (3, 5)
    tokens = prefix + 15
    attention = np.random.default_rng(2).dirichlet(np.ones(tokens), size=(2, tokens)).astype(np.float32)
    maps = np.asarray(patterns.cls_maps(attention, grid, prefix, token=token))
    assert maps.shape == (2, 2, 3, 5)
    # Patch (1, 3) is token prefix + 8.
    np.testing.assert_allclose(maps[:, patterns.CLS_ROW, 1, 3], attention[:, token, prefix + 8])
    np.testing.assert_allclose(maps[:, patterns.CLS_COLUMN, 1, 3], attention[:, prefix + 8, token])


def test_cls_maps_need_a_prefix_token():
    with pytest.raises(ValueError, match="not a prefix token"):
        patterns.cls_maps(np.zeros((9, 9), np.float32), (3, 3), 0)


def test_pattern_space_places_heads_at_the_mean_of_their_items(tmp_path):
    rng = np.random.default_rng(3)
    items = rng.random((30, 5, 5)).astype(np.float32)
    head_index = np.repeat([0, 1, 3], 10)  # head 2 has no items
    model = PatternAutoencoder((5, 5), latent_dim=3, hidden=(16,), rngs=nnx.Rngs(0))
    space = patterns.pattern_space(model, items, head_index, num_heads=4, n_clusters=3, projection="pca")
    assert space.latents.shape == (30, 3) and space.prototypes.shape == (3, 5, 5)
    np.testing.assert_allclose(space.head_xy[1], space.xy[10:20].mean(axis=0))
    np.testing.assert_allclose(space.head_shares[[0, 1, 3]].sum(axis=1), 1.0)
    assert np.isnan(space.head_xy[2]).all() and np.isnan(space.head_shares[2]).all()
    np.testing.assert_array_equal(np.bincount(space.labels[10:20], minlength=3) / 10, space.head_shares[1])
    assert np.all(space.labels[space.medoids] == np.arange(3))
    space.save(tmp_path / "space.npz")
    np.testing.assert_array_equal(patterns.PatternSpace.load(tmp_path / "space.npz").xy, space.xy)


def test_unknown_projection_is_refused():
    with pytest.raises(ValueError, match="unknown projection"):
        patterns.project_2d(np.zeros((5, 2)), "mds")


def test_project_2d_reduces_wide_points_before_tsne_and_handles_few_points():
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    points = np.random.default_rng(0).standard_normal((40, 70))
    by_hand = TSNE(2, perplexity=13.0, init="pca", random_state=3).fit_transform(
        PCA(40, random_state=3).fit_transform(points))
    np.testing.assert_allclose(patterns.project_2d(points, "tsne", seed=3), by_hand, rtol=1e-6, atol=1e-6)
    few = points[:4, :1]  # too few for t-SNE's perplexity, one dim: PCA on the padded points
    got = patterns.project_2d(few, "tsne")
    assert got.shape == (4, 2)
    np.testing.assert_allclose(np.abs(got[:, 0]), np.abs(few[:, 0] - few[:, 0].mean()), rtol=1e-9)
    np.testing.assert_array_equal(patterns.project_2d(points[:1]), np.zeros((1, 2)))
