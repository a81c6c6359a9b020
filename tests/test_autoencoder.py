"""The pattern autoencoder on synthetic pattern families: separation, PCA baseline, seeding, save/load."""

import jax
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import adjusted_rand_score
from synthetic import FAMILIES, family_dataset

from vit_jax_va import autoencoder, patterns

GRID, PREFIX = (5, 5), 1


@pytest.fixture(scope="module")
def families():
    train_attention, train_labels = family_dataset(40, GRID, PREFIX, seed=0)
    heldout_attention, _ = family_dataset(10, GRID, PREFIX, seed=1)
    train = np.asarray(patterns.recentred_map(train_attention, GRID, PREFIX))
    heldout = np.asarray(patterns.recentred_map(heldout_attention, GRID, PREFIX))
    return train, train_labels, heldout


@pytest.fixture(scope="module")
def trained(families):
    train, _, _ = families
    return autoencoder.train_autoencoder(train, latent_dim=4, hidden=(128, 32), seed=0)


def test_beats_pca_on_heldout_maps(families, trained):
    train, _, heldout = families
    model, _ = trained
    errors = autoencoder.reconstruction_errors(model, train, heldout)
    assert errors.components == 4
    print(f"held-out MSE: autoencoder {errors.autoencoder:.5f}, PCA({errors.components}) {errors.pca:.5f}")
    assert errors.autoencoder < errors.pca, (
        f"held-out MSE: autoencoder {errors.autoencoder:.5f} vs PCA({errors.components}) {errors.pca:.5f}")


def test_separates_the_families(families, trained):
    train, labels, _ = families
    model, _ = trained
    head_index = labels  # one "head" per family: its dot should sit in its own cluster
    space = patterns.pattern_space(model, train, head_index, n_clusters=len(FAMILIES),
                                   projection="tsne", seed=0)
    ari = adjusted_rand_score(labels, space.labels)
    assert ari >= 0.9, f"adjusted Rand index {ari:.3f} between k-means clusters and true families"
    assert space.xy.shape == (len(train), 2)
    assert space.head_shares.max(axis=1).min() >= 0.9  # each family mostly in one cluster


def test_early_stopping_keeps_the_best_epoch(trained):
    _, log = trained
    assert log.best_epoch == int(np.argmin(log.validation_loss))
    assert log.validation_loss[log.best_epoch] < log.validation_loss[0]


def test_training_is_reproducible_with_a_seed(families):
    train, _, _ = families
    kwargs = dict(latent_dim=3, hidden=(16,), epochs=4, batch_size=32)
    first, log_first = autoencoder.train_autoencoder(train, seed=7, **kwargs)
    second, log_second = autoencoder.train_autoencoder(train, seed=7, **kwargs)
    other, _ = autoencoder.train_autoencoder(train, seed=8, **kwargs)
    same = jax.tree.map(np.array_equal, nnx.to_pure_dict(nnx.state(first)), nnx.to_pure_dict(nnx.state(second)))
    assert all(jax.tree.leaves(same))
    assert log_first.validation_loss == log_second.validation_loss
    differ = jax.tree.map(np.array_equal, nnx.to_pure_dict(nnx.state(first)), nnx.to_pure_dict(nnx.state(other)))
    assert not all(jax.tree.leaves(differ))


def test_save_and_load_round_trip(families, trained, tmp_path):
    train, _, _ = families
    model, _ = trained
    autoencoder.save_autoencoder(model, tmp_path / "ae")
    loaded = autoencoder.load_autoencoder(tmp_path / "ae")
    assert loaded.config == model.config
    np.testing.assert_array_equal(autoencoder.encode_items(loaded, train[:5]),
                                  autoencoder.encode_items(model, train[:5]))


def test_normalise_items_scales_each_map_to_peak_one():
    items = np.zeros((2, 2, 3, 3), np.float32)  # two CLS items: [2 channels, 3, 3]
    items[0, 0, 1, 1], items[0, 1, 0, 0], items[0, 1, 2, 2] = 0.01, 0.5, 0.25
    normalised = autoencoder.normalise_items(items)
    assert normalised[0, 0, 1, 1] == 1.0 and normalised[0, 1, 0, 0] == 1.0 and normalised[0, 1, 2, 2] == 0.5
    np.testing.assert_array_equal(normalised[1], 0.0)  # an all-zero (pruned) item stays zero
