"""The shipped first run (`vit_jax_va.demo.first_run`) is what a fresh sweep of the same images
with the shipped model gives, and unpacks where the explorer looks for it."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from vit_jax_va import store
from vit_jax_va.demo import demo_training_record, first_run

# Arrays that the autoencoder's training (and t-SNE, k-means on its latents) produce: a fresh
# training on another CPU may differ in the last bits, which training amplifies; they are
# compared by what they mean (errors, cluster agreement) rather than bit for bit.
TRAINED = {"latents", "xy", "labels", "prototypes", "medoids", "head_xy", "head_shares", "errors"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-run")
    shipped = first_run.unpack(root / "runs")
    fresh = first_run.sweep(root / "fresh", log=lambda _: None)
    return shipped, fresh


def _arrays(run: Path) -> dict[str, Path]:
    return {str(p.relative_to(run).with_suffix("")): p for p in sorted(run.rglob("*.npy"))
            if "autoencoder" not in p.parts}


def test_the_shipped_first_run_is_a_complete_run_of_the_shipped_model(runs):
    shipped, _ = runs
    assert shipped.name == first_run.NAME
    run = store.open_run(shipped)  # complete, current schema, every array of its shape
    model = run.manifest["model"]
    assert model["source"] == "demo"
    assert model["weights_sha256"] == demo_training_record()["weights_sha256"]
    assert run.manifest["data"]["num_images"] == first_run.IMAGES
    assert run.manifest["options"]["keep_attention"] == first_run.OPTIONS.keep_attention


def test_the_shipped_first_run_equals_a_fresh_sweep(runs):
    shipped, fresh = runs
    old, new = store.read_manifest(shipped), store.read_manifest(fresh)
    for key in ("schema_version", "model", "data", "options", "images", "complete"):
        assert old[key] == new[key], key
    assert old["accuracy"] == pytest.approx(new["accuracy"], abs=1e-9)
    assert json.loads((shipped / "inputs.json").read_text()) == json.loads((fresh / "inputs.json").read_text())

    a, b = _arrays(shipped), _arrays(fresh)
    assert sorted(a) == sorted(b)
    for name in a:
        x, y = np.load(a[name]), np.load(b[name])
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if Path(name).name in TRAINED:
            continue
        if x.dtype.kind in "fc":
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for space in ("patch", "cls"):
        # The same clustering of the same items (up to the clusters' numbering) ...
        labels = np.load(a[f"patterns/{space}/labels"]), np.load(b[f"patterns/{space}/labels"])
        assert adjusted_rand_score(*labels) > 0.9, space
        # ... and an autoencoder as good as a fresh one.
        errors = old["pattern_errors"][space], new["pattern_errors"][space]
        assert errors[0]["autoencoder_mse"] == pytest.approx(errors[1]["autoencoder_mse"], rel=0.1)
        assert errors[0]["pca_mse"] == pytest.approx(errors[1]["pca_mse"], rel=1e-4)


def test_unpack_keeps_a_current_copy_replaces_an_old_one_and_refuses_a_stranger(tmp_path):
    runs = tmp_path / "runs"
    target = first_run.unpack(runs)
    marker = target / "marker"
    marker.write_text("kept")
    assert first_run.unpack(runs) == target and marker.is_file()  # current: untouched

    manifest = json.loads((target / store.MANIFEST).read_text())
    manifest["created"] = 0.0  # an earlier package's copy
    (target / store.MANIFEST).write_text(json.dumps(manifest))
    first_run.unpack(runs)
    assert not marker.exists() and store.read_manifest(target) == first_run.shipped_manifest()
    assert [p.name for p in runs.iterdir()] == [first_run.NAME]  # nothing left aside

    manifest["model"]["source"] = "/somewhere/else"
    (target / store.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(FileExistsError, match=first_run.NAME):
        first_run.unpack(runs)
    assert store.read_manifest(target)["model"]["source"] == "/somewhere/else"  # not touched
