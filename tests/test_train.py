"""vit_jax_va.train: a tiny seeded training run lowers the loss and is reproducible; augmentation,
PatchDropout and normalisation do what they claim; `vit-va train-demo` writes the demo files."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_data import write_idx

import vit_jax_va
from vit_jax_va import ViTConfig, preprocess
from vit_jax_va.cli import main
from vit_jax_va.demo.training import DEMO_ARCHITECTURE, demo_config, sample_per_class
from vit_jax_va.train import (TrainSettings, augment, channel_stats, evaluate, forward_kept_patches,
                              init_model, normalise, train_vit)

TINY = ViTConfig(image_size=12, patch_size=2, in_channels=1, width=16, depth=2, num_heads=2,
                 num_classes=4, mean=(0.3,), std=(0.3,), interpolation="bilinear",
                 crop_fraction=1.0)
SETTINGS = TrainSettings(epochs=1, batch_size=32, learning_rate=3e-3, warmup_epochs=0.2,
                         flip=True, crop_padding=1, patch_keep=0.5, full_token_epochs=0, seed=3)


def toy(n: int, size: int = 12, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A task a tiny ViT learns in a few steps: uint8 images `[n, size, size]` of noise whose
    brightness level is the label (`[n]`, int64, cycling 0..classes-1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    noise = rng.integers(0, 256 // classes, (n, size, size))
    images = noise + (labels * (256 // classes))[:, None, None]
    return images.astype(np.uint8), labels.astype(np.int64)


def mean_loss(model, images, labels) -> float:
    logits = model(normalise(model.config, jnp.asarray(images)))
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(labels)).mean())


@pytest.fixture(scope="module")
def tiny_run():
    images, labels = toy(320)
    model, history = train_vit(TINY, SETTINGS, images, labels, log=None)
    return images, labels, model, history


def test_one_epoch_lowers_the_loss(tiny_run):
    images, labels, model, history = tiny_run
    before = mean_loss(init_model(TINY, SETTINGS.seed), images, labels)
    after = mean_loss(model, images, labels)
    assert after < before - 0.1, (before, after)
    assert len(history) == 1 and history[0].epoch == 1 and history[0].test_accuracy is None
    assert np.isfinite(history[0].loss) and 0 <= history[0].train_accuracy <= 1


def test_training_is_reproducible_with_a_seed(tiny_run):
    images, labels, model, _ = tiny_run
    again, _ = train_vit(TINY, SETTINGS, images, labels, log=None)
    assert vit_jax_va.weights_hash(again) == vit_jax_va.weights_hash(model)
    other, _ = train_vit(TINY, dataclasses.replace(SETTINGS, seed=4), images,
                     labels, log=None)
    assert vit_jax_va.weights_hash(other) != vit_jax_va.weights_hash(model)


def test_kept_patches_forward_with_every_patch_equals_the_model():
    """Keeping all 36 patches in a random order must not change the logits `[b, K]`: attention
    is order-free once positions are embedded, and pooling reads the class token."""
    model = init_model(TINY, 0)
    x = normalise(TINY, jnp.asarray(toy(3)[0]))
    full = model(x)
    shuffled = forward_kept_patches(model, x, jax.random.key(1), keep=TINY.num_patches)
    np.testing.assert_allclose(np.asarray(shuffled), np.asarray(full), atol=1e-5)
    few = forward_kept_patches(model, x, jax.random.key(1), keep=9)
    assert few.shape == full.shape and not np.allclose(np.asarray(few), np.asarray(full), atol=1e-3)


def test_augment_flips_and_crops():
    """uint8 `[b, h, w, 1]` in, same shape out; each output is the input, flipped or not,
    shifted by at most `crop_padding` pixels with zeros coming in."""
    images = np.arange(2 * 6 * 6, dtype=np.uint8).reshape(2, 6, 6, 1) + 1
    key = jax.random.key(0)
    flipped = np.asarray(augment(key, jnp.asarray(images), flip=True, crop_padding=0))
    for image, out in zip(images, flipped):
        assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    many = np.repeat(images[:1], 64, axis=0)
    flips = np.asarray(augment(key, jnp.asarray(many), flip=True, crop_padding=0))
    assert 0 < sum(np.array_equal(o, many[0][:, ::-1]) for o in flips) < 64
    crops = np.asarray(augment(key, jnp.asarray(many), flip=False, crop_padding=1))
    padded = np.pad(many[0], ((1, 1), (1, 1), (0, 0)))
    windows = [padded[r:r + 6, c:c + 6] for r in range(3) for c in range(3)]
    assert all(any(np.array_equal(o, w) for w in windows) for o in crops)
    assert len({o.tobytes() for o in crops}) > 1


def test_normalise_matches_preprocess_for_the_demo_geometry():
    config = demo_config((0.2860,), (0.3530,))
    assert config.num_tokens == 197 and config.grid == (14, 14)
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(normalise(config, jnp.asarray(images))),
                               preprocess(config, images), atol=1e-6)


def test_channel_stats_and_sample_per_class():
    images = np.stack([np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)])
    mean, std = channel_stats(images)
    assert mean == pytest.approx((0.5,)) and std == pytest.approx((0.5,))
    labels = np.array([2, 0, 1, 0, 2, 1, 0, 2])
    np.testing.assert_array_equal(sample_per_class(labels, 2), [0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"classes \[1\] have fewer than 3"):
        sample_per_class(labels, 3)


def test_train_refuses_images_of_the_wrong_size():
    images, labels = toy(64, size=14)
    with pytest.raises(ValueError, match="images are 14x14x1; the model takes 12x12x1"):
        train_vit(TINY, SETTINGS, images, labels, log=None)


def test_train_demo_cli_writes_the_demo_files(tmp_path, monkeypatch, capsys):
    # The demo's geometry, made narrow and shallow so the test is fast.
    monkeypatch.setitem(DEMO_ARCHITECTURE, "depth", 1)
    monkeypatch.setitem(DEMO_ARCHITECTURE, "width", 8)
    monkeypatch.setitem(DEMO_ARCHITECTURE, "num_heads", 2)
    for prefix, n in (("train", 128), ("t10k", 1000)):
        images, labels = toy(n, size=28, classes=10, seed=n)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8), compress=True)
    out = tmp_path / "demo"
    assert main(["train-demo", str(out), "--data-dir", str(tmp_path), "--epochs", "1",
                 "--batch-size", "64", "--seed", "5"]) == 0
    log = capsys.readouterr().out
    assert "epoch   1/1" in log and "test accuracy" in log

    model = vit_jax_va.load(out / "checkpoint")
    assert model.config.class_names[0] == "T-shirt/top" and model.config.grid == (14, 14)
    assert model.config.mean == pytest.approx(channel_stats(toy(128, 28, 10, seed=128)[0])[0])
    record = json.loads((out / "checkpoint" / "training.json").read_text())
    assert record["epochs"] == 1 and record["seed"] == 5 and len(record["history"]) == 1
    assert record["command"].startswith("vit-va train-demo")
    assert record["weights_sha256"] == vit_jax_va.weights_hash(model)
    with np.load(out / "sample.npz") as sample:
        images, labels, indices = sample["images"], sample["labels"], sample["indices"]
        assert list(sample["class_names"]) == list(model.config.class_names)
    test_images, test_labels = toy(1000, size=28, classes=10, seed=1000)
    np.testing.assert_array_equal(indices, np.arange(1000))  # 100 of each class = all of them here
    np.testing.assert_array_equal(images, test_images[indices])
    np.testing.assert_array_equal(labels, test_labels[indices])
    assert record["test_accuracy"] == evaluate(model, test_images, test_labels)


def test_init_continues_from_given_weights(tiny_run):
    images, labels, model, _ = tiny_run
    before = vit_jax_va.weights_hash(model)
    # With a zero learning rate (AdamW scales its weight decay by it too) nothing moves.
    frozen = dataclasses.replace(SETTINGS, learning_rate=0.0, end_learning_rate=0.0)
    same, _ = train_vit(TINY, frozen, images, labels, init=model, log=None)
    assert vit_jax_va.weights_hash(same) == before
    assert vit_jax_va.weights_hash(model) == before  # init is not modified
    with pytest.raises(ValueError, match="init's config differs from config: width: 16 != 8"):
        train_vit(TINY.replace(width=8), SETTINGS, images, labels, init=model, log=None)
