"""vit_jax_va.store: atomic writes, streamed concatenation, and clear errors on open."""

import json

import numpy as np
import pytest

from vit_jax_va import store


def test_concatenate_streams_parts_along_an_axis(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((2, 3, n)).astype(np.float32) for n in (4, 1, 5)]
    store.concatenate_to_npy(tmp_path, "x", iter(parts), axis=2, total=10)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.concatenate(parts, axis=2))
    with pytest.raises(ValueError, match="y: parts cover 5 of 10"):
        store.concatenate_to_npy(tmp_path, "y", [parts[2]], axis=2, total=10)
    assert not (tmp_path / "y.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no temporary file left


def test_arrays_round_trip_without_pickle(tmp_path):
    store.write_arrays(tmp_path / "g", ids=np.asarray(["a", "b"]), v=np.arange(3))
    loaded = np.load(tmp_path / "g" / "ids.npy", allow_pickle=False)
    assert loaded.tolist() == ["a", "b"]
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["ids.npy", "v.npy"]


def _manifest(tmp_path, **changes):
    manifest = {"schema_version": store.SCHEMA_VERSION, "complete": True,
                "model": {"config": {"depth": 2, "num_heads": 3}}, "data": {"num_images": 4},
                "stages_done": ["analyse"], **changes}
    store.write_json(tmp_path / store.MANIFEST, manifest)


def test_open_run_checks_version_and_completeness(tmp_path):
    with pytest.raises(store.RunError, match="no run at"):
        store.open_run(tmp_path / "missing")
    with pytest.raises(store.RunError, match="has no manifest.json"):
        store.open_run(tmp_path)
    _manifest(tmp_path, schema_version=0)
    with pytest.raises(store.RunError, match="schema version 0"):
        store.open_run(tmp_path)
    _manifest(tmp_path, complete=False)
    with pytest.raises(store.RunError, match="incomplete \\(stages done: analyse\\)"):
        store.open_run(tmp_path)
    run = store.open_run(tmp_path, allow_incomplete=True)
    assert run.num_images == 4
    with pytest.raises(store.RunError, match="has no importance/"):
        run.arrays("importance")
    with pytest.raises(store.RunError, match="keeps no attention for image 3"):
        run.attention(3)
    (tmp_path / store.MANIFEST).write_text("{")
    with pytest.raises(store.RunError, match="not valid JSON"):
        store.open_run(tmp_path)


def test_list_runs_only_lists_runs(tmp_path):
    (tmp_path / "b").mkdir()
    _manifest(tmp_path / "b")
    (tmp_path / "a").mkdir()
    _manifest(tmp_path / "a")
    (tmp_path / "notes").mkdir()
    assert [p.name for p in store.list_runs(tmp_path)] == ["a", "b"]
    assert json.loads((tmp_path / "a" / store.MANIFEST).read_text())["complete"] is True
