"""The pattern autoencoder: compresses a pattern item (a re-centred map or the CLS maps) to a latent vector.

Items are normalised before they reach the network (`normalise_items`): every 2-D map is divided
by its own maximum, so each map lies in 0..1 whatever the token count. Raw maps carry weights of
about 1/tokens, and their scale is a *strength* (measured by `vit_jax_va.strength`); the pattern
space should group heads by the *shape* of their attention. Every function here takes raw items
and normalises them itself; reconstructions, prototypes and errors are in normalised units.

The model is a fully connected encoder/decoder on the flattened item, trained with Adam on the
mean squared error, minibatches, and early stopping on a held-out split; everything is seeded.
Its worth is measured against PCA with as many components as latent dims (`reconstruction_errors`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vit_jax_va.checkpoint import load_module, save_module

KIND = "PatternAutoencoder"


class PatternAutoencoder(nnx.Module):
    """MLP autoencoder: item `[*item_shape]` -> latent `[latent_dim]` -> item.

    Args:
      item_shape: shape of one item, e.g. (27, 27) for a 14 x 14 grid's re-centred map or
        (2, 14, 14) for its CLS maps.
      latent_dim: size of the latent vector (and of the PCA it is compared against).
      hidden: widths of the encoder's hidden layers; the decoder mirrors them.
    """

    def __init__(self, item_shape: Sequence[int], latent_dim: int = 8,
                 hidden: Sequence[int] = (256, 64), *, rngs: nnx.Rngs):
        self.item_shape = tuple(int(s) for s in item_shape)
        self.latent_dim = int(latent_dim)
        self.hidden = tuple(int(h) for h in hidden)
        widths = [math.prod(self.item_shape), *self.hidden, self.latent_dim]
        self.encoder = _mlp(widths, rngs)
        self.decoder = _mlp(widths[::-1], rngs)

    @property
    def config(self) -> dict:
        """JSON-ready constructor arguments (what `save_autoencoder` stores)."""
        return {"item_shape": list(self.item_shape), "latent_dim": self.latent_dim,
                "hidden": list(self.hidden)}

    def encode(self, items: jnp.ndarray) -> jnp.ndarray:
        """Normalised items `[n, *item_shape]` (or flattened `[n, prod(item_shape)]`) -> latents `[n, latent_dim]`."""
        return self.encoder(items.reshape(items.shape[0], -1))

    def decode(self, latents: jnp.ndarray) -> jnp.ndarray:
        """Latents `[n, latent_dim]` -> normalised items `[n, *item_shape]`."""
        return self.decoder(latents).reshape(latents.shape[0], *self.item_shape)

    def __call__(self, items: jnp.ndarray) -> jnp.ndarray:
        return self.decode(self.encode(items))


def _mlp(widths: Sequence[int], rngs: nnx.Rngs) -> nnx.Sequential:
    layers: list = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [nnx.Linear(fan_in, fan_out, rngs=rngs), nnx.gelu]
    return nnx.Sequential(*layers[:-1])  # linear output: latents and maps are not bounded by an activation


def normalise_items(items: np.ndarray) -> np.ndarray:
    """Divide every 2-D map (the last two axes) of `items` by its maximum; float32, same shape.

    Maps whose maximum is not positive (all zero: a pruned head) stay zero.
    """
    items = np.asarray(items, dtype=np.float32)
    peak = items.max(axis=(-2, -1), keepdims=True)
    return np.divide(items, peak, out=np.zeros_like(items), where=peak > 0)


@dataclasses.dataclass(frozen=True)
class TrainingLog:
    """Mean squared error (normalised units) per epoch on the training and held-out splits."""

    train_loss: list[float]
    validation_loss: list[float]
    best_epoch: int
    stopped_early: bool


def train_autoencoder(items: np.ndarray, *, latent_dim: int = 8, hidden: Sequence[int] = (256, 64),
                      epochs: int = 500, batch_size: int = 64, learning_rate: float = 1e-3,
                      validation_fraction: float = 0.15, patience: int = 30,
                      seed: int = 0) -> tuple[PatternAutoencoder, TrainingLog]:
    """Train a `PatternAutoencoder` on raw pattern items `[n, *item_shape]`.

    A seeded `validation_fraction` of the items is held out; training stops when its loss has
    not improved for `patience` epochs, and the parameters of the best epoch are returned.
    Same items and seed give identical parameters.
    """
    data = normalise_items(items)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data))
    n_val = max(1, int(round(validation_fraction * len(data))))
    if len(data) - n_val < 1:
        raise ValueError(f"{len(data)} items are too few to hold out {n_val} for validation")
    flat = data.reshape(len(data), -1)
    validation, train = jnp.asarray(flat[order[:n_val]]), flat[order[n_val:]]
    batch_size = min(batch_size, len(train))
    steps = len(train) // batch_size  # the remainder differs every epoch, so every item gets used

    model = PatternAutoencoder(data.shape[1:], latent_dim, hidden, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    optimiser = optax.adam(learning_rate)
    opt_state = optimiser.init(params)

    def loss_fn(params, batch):
        recon = nnx.merge(graphdef, params)(batch)
        return jnp.mean((recon.reshape(batch.shape) - batch) ** 2)

    @jax.jit
    def run_epoch(params, opt_state, batches):
        # One compiled scan per epoch: the per-step Python dispatch would cost more than the step.
        def step(carry, batch):
            params, opt_state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            # Adam's bias correction raises a float to an int32 step count, which strict dtype
            # promotion refuses; our own arithmetic stays strict.
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimiser.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
        return params, opt_state, losses.mean()

    evaluate = jax.jit(loss_fn)
    best, best_params, best_epoch, waited = np.inf, params, 0, 0
    train_losses, val_losses = [], []
    for epoch in range(epochs):
        shuffled = train[rng.permutation(len(train))[:steps * batch_size]]
        params, opt_state, train_loss = run_epoch(params, opt_state,
                                                  jnp.asarray(shuffled.reshape(steps, batch_size, -1)))
        val_loss = float(evaluate(params, validation))
        train_losses.append(float(train_loss))
        val_losses.append(val_loss)
        if val_loss < best:
            best, best_params, best_epoch, waited = val_loss, params, epoch, 0
        else:
            waited += 1
            if waited >= patience:
                break
    log = TrainingLog(train_losses, val_losses, best_epoch, stopped_early=len(val_losses) < epochs)
    return nnx.merge(graphdef, best_params), log


def encode_items(model: PatternAutoencoder, items: np.ndarray) -> np.ndarray:
    """Latent vectors `[n, latent_dim]` of raw items `[n, *item_shape]`."""
    return np.asarray(_encode(model, jnp.asarray(normalise_items(items))))


def reconstruct_items(model: PatternAutoencoder, items: np.ndarray) -> np.ndarray:
    """Reconstructions `[n, *item_shape]` of raw items, in normalised units."""
    return np.asarray(_reconstruct(model, jnp.asarray(normalise_items(items))))


@nnx.jit
def _encode(model, items):
    return model.encode(items)


@nnx.jit
def _reconstruct(model, items):
    return model(items)


@dataclasses.dataclass(frozen=True)
class ReconstructionErrors:
    """Held-out mean squared error per map entry, normalised units, for both compressors."""

    autoencoder: float
    pca: float
    components: int


def reconstruction_errors(model: PatternAutoencoder, train_items: np.ndarray,
                          heldout_items: np.ndarray) -> ReconstructionErrors:
    """Compare the autoencoder with PCA (`latent_dim` components, fitted on `train_items`) on `heldout_items`.

    Both see the same normalised items; the autoencoder only earns its place if its error is lower.
    """
    from sklearn.decomposition import PCA

    train = normalise_items(train_items).reshape(len(train_items), -1)
    heldout = normalise_items(heldout_items)
    flat = heldout.reshape(len(heldout), -1)
    pca = PCA(n_components=model.latent_dim, random_state=0).fit(train)
    pca_error = float(np.mean((pca.inverse_transform(pca.transform(flat)) - flat) ** 2))
    ae_error = float(np.mean((np.asarray(_reconstruct(model, jnp.asarray(heldout))) - heldout) ** 2))
    return ReconstructionErrors(autoencoder=ae_error, pca=pca_error, components=model.latent_dim)


def save_autoencoder(model: PatternAutoencoder, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save with `vit_jax_va.checkpoint.save_module` (kind "PatternAutoencoder")."""
    return save_module(model, path, kind=KIND, config=model.config, overwrite=overwrite)


def load_autoencoder(path: str | os.PathLike) -> PatternAutoencoder:
    """Inverse of `save_autoencoder`."""
    model, _ = load_module(path, lambda config: PatternAutoencoder(rngs=nnx.Rngs(0), **config), kind=KIND)
    return model
