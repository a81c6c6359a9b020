"""The shipped demo (vit_jax_va.demo): the model loads, classifies the 1,000 shipped Fashion-MNIST
images at >= 88% (computed here), exports to a timm model that computes the same logits, and
every shipped file is declared as package data. Needs no network and no Debian data package."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vit_jax_va
from vit_jax_va.data import FASHION_MNIST_CLASSES
from vit_jax_va.demo import (DEMO_DIR, LICENSE, demo_training_record, load_demo_images,
                             load_demo_model, retire_stale_demo_run)

# Issue 5's target, which the shipped weights must keep: 88% test accuracy (they have 88.14% test,
# 90.2% on the shipped sample, after seven training stages).
REQUIRED_ACCURACY = 0.88
LOGITS_TOL = 1e-4
ATTENTION_TOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return load_demo_model()


@pytest.fixture(scope="module")
def images():
    return load_demo_images()


@pytest.fixture(scope="module")
def inputs(model, images):
    """The shipped images through the data pipeline (`preprocess`): float32 `[1000, 28, 28, 1]`."""
    batches = list(images.batches(model.config, batch_size=250))
    assert [b.ids for b in batches] == [images.ids[i:i + 250] for i in range(0, len(images), 250)]
    return np.concatenate([b.images for b in batches])


@pytest.fixture(scope="module")
def logits(model, inputs):
    """Our logits `[1000, 10]`."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return np.concatenate([np.asarray(forward(state, jnp.asarray(inputs[i:i + 250])))
                           for i in range(0, len(inputs), 250)])


def test_shipped_images(images):
    assert images.images.dtype == np.uint8 and images.images.shape == (1000, 28, 28)
    assert images.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.bincount(images.labels, minlength=10), np.full(10, 100))
    indices = [int(i.split("/")[1]) for i in images.ids]
    assert indices == sorted(indices) and len(set(indices)) == 1000
    assert images.manifest()["source"] == "fashion-mnist" and images.skipped == []


def test_demo_model_geometry(model):
    c = model.config
    assert (c.image_size, c.patch_size, c.in_channels) == ((28, 28), (2, 2), 1)
    assert c.grid == (14, 14) and c.num_tokens == 197 and c.class_token
    assert 4 <= c.depth <= 6 and c.num_heads == 4 and c.width == 64
    assert c.class_names == FASHION_MNIST_CLASSES
    assert c.crop_fraction == 1.0 and c.interpolation == "bilinear"
    assert 0.2 < c.mean[0] < 0.4 and 0.25 < c.std[0] < 0.45  # Fashion-MNIST's, not ImageNet's


def test_demo_model_accuracy_on_the_shipped_images(images, logits):
    accuracy = float(np.mean(np.argmax(logits, axis=1) == images.labels))
    assert accuracy >= REQUIRED_ACCURACY, f"demo accuracy {accuracy:.4f} on the shipped images"
    record = demo_training_record()
    # The record was computed through train.normalise (JAX), this through preprocess (NumPy):
    # rounding may flip at most a borderline image.
    assert record["sample_accuracy"] == pytest.approx(accuracy, abs=1.5e-3)
    assert record["sample_images"] == 1000


def test_training_record_describes_the_shipped_weights(model):
    record = demo_training_record()
    assert record["weights_sha256"] == vit_jax_va.weights_hash(model)
    assert record["test_images"] == 10_000 and record["test_accuracy"] >= REQUIRED_ACCURACY
    assert record["command"].startswith("vit-va train-demo")
    assert record["epochs"] == len(record["history"]) and isinstance(record["seed"], int)
    assert record["training_seconds"] > 0


def test_demo_exports_to_timm_with_equal_logits(model, inputs, logits):
    torch = pytest.importorskip("torch")
    import converters

    timm_model = converters.create_timm_model(model.config, converters.to_timm(model))
    nchw = torch.from_numpy(inputs.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        theirs = np.concatenate([timm_model(nchw[i:i + 250]).numpy()
                                 for i in range(0, len(nchw), 250)])
    assert theirs.shape == logits.shape == (1000, 10)
    assert np.max(np.abs(theirs - logits)) <= LOGITS_TOL
    their_logits, their_attention = converters.timm_forward(timm_model, nchw[:4])
    ours = model(jnp.asarray(inputs[:4]), return_attention=True)
    assert np.max(np.abs(np.asarray(ours.attention) - their_attention)) <= ATTENTION_TOL


def test_every_shipped_file_is_package_data():
    pyproject = tomllib.loads((Path(vit_jax_va.__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["vit_jax_va.demo"]
    declared = {Path(p) for pattern in patterns
                for p in glob.glob(str(DEMO_DIR / pattern), recursive=True) if Path(p).is_file()}
    shipped = {p for p in DEMO_DIR.rglob("*")
               if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert shipped and shipped == declared
    assert {"sample.npz", "LICENSE-fashion-mnist.txt"} <= {p.name for p in shipped}
    assert any(p.parent.name == "state" for p in shipped)
    total = sum(p.stat().st_size for p in shipped)
    assert total < 10 * 2**20, f"the demo files take {total / 2**20:.1f} MB"


def test_licence_and_attribution():
    text = LICENSE.read_text()
    for needed in ("MIT License", "Copyright (c) 2017 Zalando SE", "arXiv:1708.07747",
                   "Xiao", "Rasul", "Vollgraf"):
        assert needed in text


def test_sweep_without_model_data_or_out_runs_the_demo_into_runs_demo(tmp_path, model, images):
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "sweep", "--images", "6",
                             "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    run = vit_jax_va.open_run(tmp_path / "runs" / "demo")
    assert run.manifest["complete"] and run.num_images == 6
    assert run.manifest["model"]["weights_sha256"] == vit_jax_va.weights_hash(model)
    np.testing.assert_array_equal(run.array("images", "labels"), images.labels[:6])
    assert "sweep complete" in result.stdout + result.stderr

    # After an upgrade the demo run is of an earlier demo model: the same command moves it
    # aside (nothing lost) and computes a run of the shipped model.
    manifest_path = tmp_path / "runs" / "demo" / "manifest.json"
    earlier = json.loads(manifest_path.read_text())
    earlier["model"]["weights_sha256"] = "feedbeef" + "0" * 56
    manifest_path.write_text(json.dumps(earlier))
    again = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "sweep", "--images", "6",
                            "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "moved it to" in again.stdout and "demo-feedbeef" in again.stdout, again.stdout
    assert json.loads((tmp_path / "runs" / "demo-feedbeef" / "manifest.json").read_text()) == earlier
    rerun = vit_jax_va.open_run(tmp_path / "runs" / "demo")
    assert rerun.manifest["complete"]
    assert rerun.manifest["model"]["weights_sha256"] == vit_jax_va.weights_hash(model)


def _manifest(run_dir, **model):
    run_dir.mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps(
        {"schema_version": vit_jax_va.store.SCHEMA_VERSION, "model": model}))


def test_only_stale_demo_runs_are_moved_aside(tmp_path, model):
    shipped = vit_jax_va.weights_hash(model)
    _manifest(tmp_path / "current", source="demo", weights_sha256=shipped)
    _manifest(tmp_path / "other-model", source="/models/mine", weights_sha256="ab" * 32)
    (tmp_path / "not-a-run").mkdir()
    for name in ("current", "other-model", "not-a-run", "missing"):
        assert retire_stale_demo_run(tmp_path / name, log=lambda line: None) is None, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "not-a-run", "other-model"]

    _manifest(tmp_path / "old", source="demo", weights_sha256="12345678" + "0" * 56)
    (tmp_path / "old-12345678").mkdir()  # the name is taken: a suffix keeps both
    said = []
    assert retire_stale_demo_run(tmp_path / "old", log=said.append) == tmp_path / "old-12345678-2"
    assert not (tmp_path / "old").exists() and "earlier demo model" in said[0]

    old_schema = tmp_path / "old-schema"
    _manifest(old_schema, source="demo", weights_sha256=shipped)
    manifest = json.loads((old_schema / "manifest.json").read_text())
    (old_schema / "manifest.json").write_text(json.dumps({**manifest, "schema_version": -1}))
    assert retire_stale_demo_run(old_schema, log=said.append) == tmp_path / f"old-schema-{shipped[:8]}"
    assert "schema version" in said[1]
