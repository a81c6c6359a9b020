"""What each stage of the sweep computes, as functions of arrays (the runner reads and writes).

- `analyse_chunk`: one chunk of images -> every head pruned alone in every mode, Taylor
  importance, the strength statistics of every head, the pattern items of the sampled images
  and the full attention of the kept ones;
- `curve_split`, `pruning_curves`: the cumulative pruning curves, ranked and measured on
  disjoint images;
- `pattern_stage`: one pattern space (autoencoder, 2-D map, clusters) of the sampled items;
- `image_layout`: the image overview's 2-D layout.

Shapes: N images, L layers, H heads, T tokens, F = L * H heads in all.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_jax_va import batching
from vit_jax_va.head_scores import taylor_importance
from vit_jax_va.importance import HeadAblation, ablate_heads, probability_drop
from vit_jax_va.model import ViT
from vit_jax_va.sweep.options import SweepOptions

# What the sweep stores of a `HeadAblation` (the logits come from the forward pass with the
# strength statistics; the head confidence is stored with them, in strength/).
ABLATION_FIELDS = tuple(k for k in HeadAblation.shapes()
                        if k not in ("baseline_logits", "head_confidence"))


def attention_forward(model: ViT):
    """The jitted forward pass images `[B, ...]` -> (logits, pre-logits, attention
    `[B, L, H, T, T]`)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(images):
        out = nnx.merge(graphdef, state)(images, return_attention=True)
        return out.logits, out.pre_logits, out.attention

    return forward


def pattern_sample(num_images: int, options: SweepOptions) -> np.ndarray:
    """Sorted positions of the images whose pattern items are collected (a seeded choice)."""
    rng = np.random.default_rng(options.seed)
    count = min(options.pattern_images, num_images)
    return np.sort(rng.choice(num_images, size=count, replace=False))


def analyse_chunk(model: ViT, images: np.ndarray, labels: np.ndarray | None, positions: np.ndarray,
                  options: SweepOptions, *, sampled: np.ndarray, kept: np.ndarray, forward,
                  mesh=None) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Everything the sweep measures on one chunk of preprocessed images `[n, ...]` at run
    `positions` `[n]`.

    Returns:
      (chunk arrays: the `ABLATION_FIELDS` the model has, `taylor` `[L, H, n]` (with a
      classifier), `logits`, `features`, the
      strength statistics, and for the sampled images `patch_items`, `cls_items`,
      `item_image`; {position: attention `[L, H, T, T]`} of the kept images).
    """
    ablation = ablate_heads(model, images, labels, modes=options.modes,
                            batch_size=options.batch_size, mesh=mesh,
                            patch_tokens=options.patch_tokens)
    chunk = {k: v for k, v in ablation.arrays().items() if k in ABLATION_FIELDS}
    if ablation.has_classifier:  # the gradient of a loss: there is none without a class
        chunk["taylor"] = taylor_importance(model, images, labels, per_image=True,
                                            batch_size=options.batch_size)
    statistics, attention = attention_statistics(model.config, forward, images, positions,
                                                 options.batch_size, sampled=sampled, kept=kept)
    return {**chunk, **statistics}, attention


def attention_statistics(config, forward, images: np.ndarray, positions: np.ndarray,
                         batch_size: int, *, sampled: np.ndarray, kept: np.ndarray
                         ) -> tuple[dict[str, np.ndarray], dict[int, np.ndarray]]:
    """Per image: logits, features, strength statistics; pattern items of the `sampled`
    positions; the full attention of the `kept` positions (see `analyse_chunk`)."""
    from vit_jax_va.patterns import cls_maps, recentred_map
    from vit_jax_va.strength import strength_statistics

    c = config
    parts: dict[str, list[np.ndarray]] = {}
    attention_of: dict[int, np.ndarray] = {}
    for start, stop, (padded,) in batching.chunks([images], batch_size):
        n = stop - start
        logits, pre_logits, attention = forward(jnp.asarray(padded))
        attention = attention[:n]
        stats = strength_statistics(attention, c.grid, c.num_prefix_tokens, c.patch_size)
        values = {"logits": logits[:n], "features": pre_logits[:n], **stats}
        index = positions[start:stop]
        chosen = np.isin(index, sampled)
        if chosen.any():
            picked = attention[np.flatnonzero(chosen)]
            values["patch_items"] = recentred_map(picked, c.grid, c.num_prefix_tokens)
            if c.num_prefix_tokens:
                values["cls_items"] = cls_maps(picked, c.grid, c.num_prefix_tokens)
            values["item_image"] = index[chosen]
        for i in np.flatnonzero(np.isin(index, kept)):
            attention_of[int(index[i])] = np.asarray(attention[i])
        for key, value in values.items():
            parts.setdefault(key, []).append(np.asarray(value))
    return {k: np.concatenate(v) for k, v in parts.items()}, attention_of


def curve_split(num_images: int, curve_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(ranking, measured) image positions of the curve stage: the curves are measured on
    every other image (positions 1, 3, 5, ..., at most `curve_images` of them) and the heads
    are ranked on all the others, so the curve checks the ranking on images it was not made
    from; interleaving keeps both halves alike when images come sorted by class. A one-image
    run ranks and measures on that image."""
    positions = np.arange(num_images)
    if num_images < 2:
        return positions, positions
    measured = positions[1::2][:curve_images]
    return np.setdiff1d(positions, measured), measured


def ranking(importance: dict[str, np.ndarray], head: int, images: np.ndarray
            ) -> tuple[str, np.ndarray]:
    """What the sweep ranks heads by (the summary, the pruning curve), from the stored
    `importance` arrays of the whole-head mode (index `head`) on `images`: ("prob_drop", the
    `probability_drop` `[L, H]`) with a classifier, else ("feature_cos", the mean feature change
    `[L, H]`). Larger means pruning the head changes more."""
    if "prob" in importance:
        return "prob_drop", probability_drop(np.asarray(importance["baseline_prob"])[images],
                                             np.asarray(importance["prob"][head][..., images]))
    return "feature_cos", np.asarray(importance["feature_cos"][head][..., images], np.float64).mean(axis=-1)


def pruning_curves(model: ViT, images: np.ndarray, labels: np.ndarray | None, scores: np.ndarray,
                   batch_size: int, on_curve=lambda: None) -> dict[str, np.ndarray]:
    """Both cumulative pruning curves (most and least important head first) on `images`, in
    the order of `scores` `[L, H]` (`ranking`): the mean feature change after each step and,
    with a classifier, the accuracy and mean reference-class probability. `on_curve()` is
    called after each curve."""
    from vit_jax_va.pruning_curve import pruning_curve

    curves = {}
    for name, first in (("most", True), ("least", False)):
        curve = pruning_curve(model, images, scores, labels, most_important_first=first,
                              batch_size=batch_size)
        curves[f"order_{name}"] = curve.order
        curves[f"feature_cos_{name}"] = curve.mean_feature_cos
        if curve.prob is not None:
            curves[f"accuracy_{name}"] = curve.accuracy
            curves[f"prob_{name}"] = curve.mean_prob
        curves["num_pruned"] = curve.num_pruned
        on_curve()
    return curves


def heldout_items(num_images: int, heads: int, seed: int, fraction: float = 0.15) -> np.ndarray:
    """Bool `[num_images * heads]`: the items of a seeded `fraction` of the images (at least
    one), held out of autoencoder training. Whole images, so that held-out maps are never
    those of an image the autoencoder saw through another head."""
    rng = np.random.default_rng(seed)
    if num_images < 2:
        return rng.random(num_images * heads) < fraction
    held = np.zeros(num_images, bool)
    held[rng.choice(num_images, max(1, round(fraction * num_images)), replace=False)] = True
    return np.repeat(held, heads)


def pattern_stage(raw: np.ndarray, image: np.ndarray, options: SweepOptions
                  ) -> tuple[Any, dict[str, np.ndarray], dict[str, Any]]:
    """One pattern space of the sampled images' items.

    Args:
      raw: items `[images, L, H, ...]`; image: `[images]` their run positions.
    Returns:
      (the trained autoencoder, the arrays to store: `items`, `item_image`, `item_head`,
      `errors` and the `PatternSpace` fields, the held-out errors for the manifest).
    """
    from vit_jax_va.autoencoder import reconstruction_errors, train_autoencoder
    from vit_jax_va.patterns import pattern_space

    heads = raw.shape[1] * raw.shape[2]
    items = raw.reshape(-1, *raw.shape[3:])
    head = np.tile(np.arange(heads), len(raw))
    heldout = heldout_items(len(raw), heads, options.seed)
    autoencoder, log = train_autoencoder(items[~heldout], latent_dim=options.latent_dim,
                                         seed=options.seed)
    err = reconstruction_errors(autoencoder, items[~heldout], items[heldout])
    space = pattern_space(autoencoder, items, head, num_heads=heads,
                          n_clusters=min(options.clusters, len(items)),
                          projection=options.projection, seed=options.seed)
    arrays = dict(items=items, item_image=np.repeat(image, heads), item_head=head,
                  errors=np.asarray([err.autoencoder, err.pca]), **dataclasses.asdict(space))
    errors = {"autoencoder_mse": err.autoencoder, "pca_mse": err.pca,
              "components": err.components, "epochs": len(log.train_loss)}
    return autoencoder, arrays, errors


def image_layout(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D layout `[N, 2]` float32 of image features `[N, C]`: t-SNE (`patterns.project_2d`),
    PCA alone for more than 20,000 images (t-SNE would take hours on a CPU)."""
    from vit_jax_va.patterns import project_2d

    projection = "pca" if len(features) > 20_000 else "tsne"
    return project_2d(features, projection, seed=seed).astype(np.float32)
