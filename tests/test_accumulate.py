"""Streaming accumulators equal the all-at-once computation, stay bounded, and survive save/load."""

import pickle

import numpy as np
import pytest

from vit_jax_va import patterns, strength
from vit_jax_va.accumulate import PatternSampler, StrengthAccumulator

GRID, PREFIX, PATCH = (3, 5), 1, (16, 16)
LAYERS, HEADS = 2, 3


def stream(images, seed=0):
    tokens = PREFIX + GRID[0] * GRID[1]
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(tokens, 0.3), size=(images, LAYERS, HEADS, tokens)).astype(np.float32)


def feed(acc, attention, ids, batch):
    for start in range(0, len(attention), batch):
        acc.update(attention[start:start + batch], ids[start:start + batch])
    return acc


def test_strength_accumulator_equals_all_at_once():
    attention = stream(7)
    ids = np.arange(100, 107)
    result = feed(StrengthAccumulator(GRID, PREFIX, PATCH, keep=[102, 999]), attention, ids, 3).result()
    everything = strength.strength_statistics(attention, GRID, PREFIX, PATCH)
    for name, values in everything.items():
        values = np.asarray(values, dtype=np.float64)
        np.testing.assert_allclose(result[f"{name}_mean"], values.mean(axis=0), rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(result[f"{name}_std"], values.std(axis=0), rtol=1e-3, atol=1e-7, err_msg=name)
        np.testing.assert_array_equal(result[f"{name}_count"], 7)
    for name in strength.STATISTICS:
        edges = strength.histogram_edges(name, GRID, PATCH)
        np.testing.assert_array_equal(result[f"{name}_histogram"],
                                      strength.fixed_histogram(everything[name], edges), err_msg=name)
        assert result[f"{name}_histogram"].shape == (LAYERS, HEADS, 32)
    assert result["images"] == 7
    assert list(result["kept"]) == [102]  # 999 never came
    np.testing.assert_array_equal(result["kept"][102], attention[2])


def test_strength_accumulator_skips_nan_of_pruned_heads():
    attention = stream(4)
    attention[1, 0, 2] = 0.0  # layer 0 head 2 pruned on image 1: no profile, NaN entropy
    result = feed(StrengthAccumulator(GRID, PREFIX, PATCH), attention, list("abcd"), 2).result()
    assert result["entropy_count"][0, 2] == 3 and result["entropy_count"][0, 1] == 4
    assert np.isfinite(result["entropy_mean"]).all()
    assert result["entropy_histogram"][0, 2].sum() == 3


def test_strength_accumulator_memory_does_not_grow():
    acc = StrengthAccumulator(GRID, PREFIX, PATCH, keep=[0])
    attention = stream(8)
    acc.update(attention[:2], [0, 1])
    sizes = {name: value.nbytes for name, value in acc.sums.items()}
    acc.update(attention[2:], list(range(2, 8)))
    assert {name: value.nbytes for name, value in acc.sums.items()} == sizes
    assert len(acc.kept) == 1


def test_strength_accumulator_resumes_from_npz_and_pickle(tmp_path):
    attention = stream(6)
    ids = ["img0", "img1", "img2", "img3", "img4", "img5"]
    straight = feed(StrengthAccumulator(GRID, PREFIX, PATCH, keep=["img4", "img1"]), attention, ids, 2)
    first = feed(StrengthAccumulator(GRID, PREFIX, PATCH, keep=["img4", "img1"]), attention[:4], ids[:4], 2)
    first.save(tmp_path / "acc.npz")
    resumed = StrengthAccumulator.load(tmp_path / "acc.npz")
    resumed.update(attention[4:], ids[4:])
    unpickled = pickle.loads(pickle.dumps(straight))
    for other in (resumed, unpickled):
        got, want = other.result(), straight.result()
        assert got.keys() == want.keys()
        for key in want:
            if key == "kept":
                assert got[key].keys() == want[key].keys()
            else:
                np.testing.assert_allclose(got[key], want[key], rtol=1e-12, err_msg=key)


def test_pattern_sampler_keeps_everything_under_quota():
    attention = stream(5)
    sampler = feed(PatternSampler(GRID, PREFIX, quota=8, seed=1), attention, np.arange(5), 2)
    items, head_index, image_ids = sampler.result("patch")
    np.testing.assert_allclose(items.reshape(5, LAYERS, HEADS, 5, 9),
                               patterns.recentred_map(attention, GRID, PREFIX), rtol=1e-6)
    np.testing.assert_array_equal(head_index[:7], [0, 1, 2, 3, 4, 5, 0])
    np.testing.assert_array_equal(image_ids[::LAYERS * HEADS], np.arange(5))
    cls_items, _, _ = sampler.result("cls")
    np.testing.assert_allclose(cls_items.reshape(5, LAYERS, HEADS, 2, 3, 5),
                               patterns.cls_maps(attention, GRID, PREFIX), rtol=1e-6)


def test_pattern_sampler_is_bounded_seeded_and_batching_free(tmp_path):
    attention = stream(20)
    ids = np.arange(20)
    one_by_one = feed(PatternSampler(GRID, PREFIX, quota=4, seed=3), attention, ids, 1)
    in_fives = feed(PatternSampler(GRID, PREFIX, quota=4, seed=3), attention, ids, 5)
    other_seed = feed(PatternSampler(GRID, PREFIX, quota=4, seed=4), attention, ids, 5)
    assert one_by_one.image_ids == in_fives.image_ids
    assert one_by_one.image_ids != other_seed.image_ids
    assert one_by_one.patch_items.shape[0] == 4 and one_by_one.seen == 20
    # Each stored item is the map of the image recorded beside it.
    items, _, image_ids = in_fives.result()
    maps = np.asarray(patterns.recentred_map(attention, GRID, PREFIX))
    expected = maps[np.asarray(in_fives.image_ids)].reshape(items.shape)
    np.testing.assert_allclose(items, expected, rtol=1e-6)
    # Resuming from disk half-way gives the same final sample.
    half = feed(PatternSampler(GRID, PREFIX, quota=4, seed=3), attention[:10], ids[:10], 5)
    half.save(tmp_path / "sampler.npz")
    resumed = feed(PatternSampler.load(tmp_path / "sampler.npz"), attention[10:], ids[10:], 5)
    assert resumed.image_ids == in_fives.image_ids
    np.testing.assert_array_equal(resumed.patch_items, in_fives.patch_items)


def test_pattern_sampler_without_prefix_has_no_cls_items():
    tokens = 15
    attention = np.full((2, 1, 1, tokens, tokens), 1 / tokens, np.float32)
    sampler = PatternSampler(GRID, 0, quota=2)
    sampler.update(attention, ["a", "b"])
    with pytest.raises(ValueError, match="no prefix token"):
        sampler.result("cls")
    with pytest.raises(ValueError, match="2 image ids for a batch of 1"):
        sampler.update(attention[:1], ["a", "b"])
