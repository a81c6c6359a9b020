"""vit_jax_va.probe and `vit-va probe`: a linear classifier on a backbone's pooled features,
checked against a probe fitted by hand (scikit-learn) on the same features."""

from __future__ import annotations

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from jax_cases import random_vit

import vit_jax_va
from vit_jax_va.data import ImageDataset
from vit_jax_va.demo import load_demo_images, load_demo_model
from vit_jax_va.probe import fit_probe

BACKBONE = vit_jax_va.ViTConfig(image_size=28, patch_size=4, in_channels=1, mean=(0.5,), std=(0.25,), width=32,
                                depth=2, num_heads=2, num_classes=0, crop_fraction=1.0)


def test_the_probed_model_computes_a_probe_fitted_by_hand():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    backbone = random_vit(BACKBONE, seed=2)
    dataset = load_demo_images().subset(range(200))
    # Both fits solved to the unique optimum (L2-regularised: strictly convex), so that they
    # agree however their inputs round.
    probe = fit_probe(backbone, dataset, holdout=0.25, C=0.5, seed=3, tol=1e-10, max_iter=20000)
    model = probe.model
    assert model.config.num_classes == 10 and model.config.class_names == dataset.class_names
    images = next(dataset.batches(BACKBONE, batch_size=200)).images
    features = np.asarray(backbone(jnp.asarray(images)), np.float64)  # a backbone's output: its pooled features
    order = np.random.default_rng(3).permutation(200)
    train, heldout = order[:150], order[150:]
    by_hand = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=20000))
    by_hand.fit(features[train], dataset.labels[train])
    logits = np.asarray(model(jnp.asarray(images)))
    expected = by_hand.decision_function(features)
    assert np.max(np.abs(logits - expected)) <= 1e-3 * max(1.0, np.max(np.abs(expected)))
    assert probe.heldout_accuracy == pytest.approx(by_hand.score(features[heldout], dataset.labels[heldout]))
    assert probe.num_train == 150 and probe.num_heldout == 50
    # The backbone's weights are kept.
    again = np.asarray(model.blocks[1].mlp.fc2.kernel[...])
    np.testing.assert_array_equal(again, np.asarray(backbone.blocks[1].mlp.fc2.kernel[...]))


def test_a_probe_on_good_features_classifies_well():
    """The demo model's own features, probed afresh on 400 images: well above the 10% of
    chance (the demo's classifier scores 88%)."""
    probe = fit_probe(load_demo_model(), load_demo_images().subset(range(400)), seed=0)
    assert probe.heldout_accuracy > 0.7 and probe.chance < 0.3, probe


def test_unlabelled_images_are_refused():
    images = ImageDataset(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(ValueError, match="no labels"):
        fit_probe(random_vit(BACKBONE), images)


def test_probe_command_saves_a_model_that_sweeps(tmp_path):
    vit_jax_va.save(random_vit(BACKBONE, seed=1), tmp_path / "backbone")
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "probe", str(tmp_path / "backbone"),
                             "--data", "demo", "--images", "60", "--out", str(tmp_path / "probed"),
                             "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "held-out" in result.stdout and "on 12 images" in result.stdout
    probed = vit_jax_va.load(tmp_path / "probed")
    assert probed.config.num_classes == 10
    sweep = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "sweep", "--model", str(tmp_path / "probed"),
                            "--data", "demo", "--images", "4", "--out", str(tmp_path / "run"), "--chunk-size", "4",
                            "--batch-size", "4", "--pattern-images", "4", "--curve-images", "4",
                            "--projection", "pca", "--modes", "head", "--no-progress"],
                           capture_output=True, text=True)
    assert sweep.returncode == 0, sweep.stderr
    assert vit_jax_va.open_run(tmp_path / "run").array("importance", "prob").shape == (1, 2, 2, 4)
