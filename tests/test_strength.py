"""Strength statistics against known answers and against slow explicit loops written here."""

import math

import numpy as np
import pytest

from vit_jax_va import strength

GRIDS = [(3, 3), (3, 5), (4, 2)]
PREFIXES = [0, 1, 5]


def random_attention(grid, prefix, lead=(2, 3), seed=0):
    tokens = prefix + grid[0] * grid[1]
    logits = np.random.default_rng(seed).normal(scale=2.0, size=(*lead, tokens, tokens))
    weights = np.exp(logits)
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def slow_hop_profile(attention, grid, prefix):
    """One (query, key) pair at a time, straight from the definition."""
    rows, cols = grid
    rings = max(rows, cols)
    out = np.zeros((*attention.shape[:-2], rings))
    for lead in np.ndindex(*attention.shape[:-2]):
        a = attention[lead]
        for d in range(rings):
            means = []
            for qr in range(rows):
                for qc in range(cols):
                    ring = [(kr, kc) for kr in range(rows) for kc in range(cols)
                            if max(abs(kr - qr), abs(kc - qc)) == d]
                    if ring:
                        q = prefix + qr * cols + qc
                        means.append(np.mean([a[q, prefix + kr * cols + kc] for kr, kc in ring]))
            out[lead + (d,)] = np.mean(means)
    return out


def slow_mean_distance(attention, grid, prefix, patch_size, renormalise):
    rows, cols = grid
    ph, pw = patch_size
    out = np.zeros(attention.shape[:-2])
    for lead in np.ndindex(*attention.shape[:-2]):
        a = attention[lead]
        per_query = []
        for q in range(rows * cols):
            total, mass = 0.0, 0.0
            for k in range(rows * cols):
                w = a[prefix + q, prefix + k]
                total += w * math.hypot((k // cols - q // cols) * ph, (k % cols - q % cols) * pw)
                mass += w
            per_query.append(total / mass if renormalise else total)
        out[lead] = np.mean(per_query)
    return out


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_hop_profile_matches_slow_loop(grid, prefix):
    attention = random_attention(grid, prefix)
    got = np.asarray(strength.hop_profile(attention, grid=grid, num_prefix_tokens=prefix))
    np.testing.assert_allclose(got, slow_hop_profile(attention, grid, prefix), rtol=1e-5, atol=1e-7)


def test_ring_clipping_at_corner_of_3x5():
    # Every query attends only to patch (0, 4), the top-right corner.
    grid, prefix = (3, 5), 1
    attention = np.zeros((16, 16), np.float32)
    attention[:, prefix + 4] = 1.0
    got = np.asarray(strength.hop_profile(attention, grid=grid, num_prefix_tokens=prefix))
    np.testing.assert_allclose(got, slow_hop_profile(attention, grid, prefix), rtol=1e-6)
    # Ring 4 exists only for the 6 queries in columns 0 and 4, each clipped to 3 patches (a
    # column). Column-0 queries find the corner there (1/3 each), column-4 queries do not: 1/6.
    assert got[4] == pytest.approx(1 / 6)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_identity_attention_is_all_at_hop_zero(grid, prefix):
    tokens = prefix + grid[0] * grid[1]
    profile = strength.hop_profile(np.eye(tokens, dtype=np.float32), grid, prefix)
    expected = np.zeros(max(grid), np.float32)
    expected[0] = 1.0
    np.testing.assert_allclose(np.asarray(profile), expected, atol=1e-7)
    assert float(strength.head_entropy(profile)) == pytest.approx(0.0, abs=1e-7)
    assert float(strength.head_confidence(np.eye(tokens, dtype=np.float32), prefix)) == pytest.approx(1.0)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("prefix", PREFIXES)
def test_uniform_attention_is_flat(grid, prefix):
    tokens = prefix + grid[0] * grid[1]
    uniform = np.full((2, tokens, tokens), 1 / tokens, np.float32)
    profile = np.asarray(strength.hop_profile(uniform, grid, prefix))
    np.testing.assert_allclose(profile, 1 / tokens, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(strength.head_entropy(profile)), math.log(max(grid)), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(strength.cls_share(uniform, prefix)), prefix / tokens, atol=1e-6)
    np.testing.assert_allclose(np.asarray(strength.head_confidence(uniform, prefix)), 1 / tokens, rtol=1e-5)


def test_head_entropy_handles_zeros():
    profiles = np.array([[0.0, 2.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    got = np.asarray(strength.head_entropy(profiles))
    np.testing.assert_allclose(got[:2], [0.0, math.log(2)], atol=1e-6)
    assert np.isnan(got[2])


@pytest.mark.parametrize("grid,prefix", [((3, 3), 1), ((3, 5), 0), ((4, 2), 5)])
@pytest.mark.parametrize("renormalise", [True, False])
def test_mean_attention_distance_matches_slow_loop(grid, prefix, renormalise):
    attention = random_attention(grid, prefix, seed=1)
    got = strength.mean_attention_distance(attention, grid, prefix, (16, 8), renormalise=renormalise)
    want = slow_mean_distance(attention, grid, prefix, (16, 8), renormalise)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_cls_share_counts_all_prefix_tokens():
    prefix = 2
    attention = np.zeros((6, 6), np.float32)
    attention[:, 0] = 0.25   # class token
    attention[:, 1] = 0.15   # distillation token
    attention[:, 2:] = 0.15  # patches: 0.6 in total
    assert float(strength.cls_share(attention, prefix)) == pytest.approx(0.4)
    assert float(strength.head_confidence(attention, prefix)) == pytest.approx(0.25)


def test_statistics_agree_with_the_single_functions():
    grid, prefix = (3, 5), 1
    attention = random_attention(grid, prefix, lead=(2, 2, 3), seed=2)
    stats = strength.strength_statistics(attention, grid, prefix, (16, 16))
    profile = strength.hop_profile(attention, grid, prefix)
    np.testing.assert_allclose(stats["profile"], profile, rtol=1e-6)
    np.testing.assert_allclose(stats["entropy"], strength.head_entropy(profile), rtol=1e-6)
    np.testing.assert_allclose(stats["mean_distance"],
                               strength.mean_attention_distance(attention, grid, prefix, (16, 16)), rtol=1e-6)
    assert stats["cls_share"].shape == (2, 2, 3)


def test_wrong_token_count_is_refused():
    with pytest.raises(ValueError, match="10 tokens"):
        strength.hop_profile(np.zeros((10, 10), np.float32), grid=(3, 3), num_prefix_tokens=0)


def test_layer_trend_summarises_heads_after_images():
    stat = np.array([[[1.0, 3.0], [0.0, 0.0]],
                     [[3.0, 5.0], [2.0, np.nan]]])  # [images=2, layers=2, heads=2]
    trend = strength.layer_trend(stat)
    np.testing.assert_allclose(trend.mean, [3.0, 0.5])  # head means: [2, 4] and [1, 0]
    np.testing.assert_allclose(trend.std, [1.0, 0.5])
    np.testing.assert_allclose(trend.max, [4.0, 1.0])


def test_same_layout_compiles_once():
    # A grid given as a list (from JSON) must hit the same compiled function as a tuple.
    attention = np.full((7, 1, 10, 10), 0.1, np.float32)  # a shape no other test uses
    before = strength._hop_profile._cache_size()
    strength.hop_profile(attention, [3, 3], 1)
    strength.hop_profile(attention * 2, grid=(3, 3), num_prefix_tokens=1)
    assert strength._hop_profile._cache_size() == before + 1
