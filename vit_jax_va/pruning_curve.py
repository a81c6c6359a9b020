"""Cumulative pruning curve: the standard check that a metric ranks heads well.

Heads are pruned one after another in the order of an importance score, and after each step
the accuracy and the mean reference-class probability are measured, and how far the pooled
features moved (1 - cosine similarity to the unpruned ones; the only measure for a model
without a classifier). A good score that prunes least-important-first keeps accuracy up (the
features still) longest; most-important-first drops it fastest.
Every step is a head mask `[L, H]` with more zeros; the steps run vectorised with `jax.vmap`,
in chunks, inside one jitted call per image chunk.

Shapes: S steps, N images, L layers, H heads.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_jax_va import batching
from vit_jax_va.importance import change
from vit_jax_va.model import ViT
from vit_jax_va.reference import check_labels, reference_class


@dataclasses.dataclass(frozen=True)
class PruningCurve:
    """Attributes:
      order: `[L*H]` flat head indices (`layer * H + head`) in pruning order.
      num_pruned: `[S]` heads pruned at each step.
      feature_cos: `[S, N]` 1 - cosine similarity of the pooled features after each step and
        unpruned.
      prob: `[S, N]` reference-class probability after each step (None without a classifier).
      correct: `[S, N]` bool, top-1 == reference class after each step (None without one).
      reference: `[N]` the label, else the unpruned top-1 class (None without one).
    """

    order: np.ndarray
    num_pruned: np.ndarray
    feature_cos: np.ndarray
    prob: np.ndarray | None = None
    correct: np.ndarray | None = None
    reference: np.ndarray | None = None

    @property
    def accuracy(self) -> np.ndarray | None:
        """`[S]` top-1 accuracy after each step."""
        return None if self.correct is None else self.correct.mean(axis=-1)

    @property
    def mean_prob(self) -> np.ndarray | None:
        """`[S]` mean reference-class probability after each step."""
        return None if self.prob is None else self.prob.mean(axis=-1)

    @property
    def mean_feature_cos(self) -> np.ndarray:
        """`[S]` mean feature change (1 - cosine similarity) after each step."""
        return self.feature_cos.mean(axis=-1)


def cumulative_head_masks(order, num_pruned, num_layers: int, num_heads: int) -> np.ndarray:
    """Head masks `[S, L, H]`: step s zeroes the first `num_pruned[s]` heads of `order`."""
    order = np.asarray(order)
    rank = np.empty(order.size, np.int64)
    rank[order] = np.arange(order.size)
    keep = rank[None, :] >= np.asarray(num_pruned)[:, None]
    return keep.reshape(-1, num_layers, num_heads).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _curve_chunk(graphdef, state, images, labels, head_masks, step_chunk):
    model = nnx.merge(graphdef, state)
    classifier = model.config.num_classes > 0

    def run(head_mask=None):
        return model.classify(model.encode(images, head_mask=head_mask, rows=model.classifier_rows)[0])

    logits, features = run()
    reference = reference_class(logits, labels) if classifier else None

    def step(head_mask):
        logits, pruned_features = run(head_mask)
        out = {"feature_cos": change(pruned_features, features)[0]}
        if classifier:
            logp = jax.nn.log_softmax(logits, axis=-1)
            out["prob"] = jnp.exp(jnp.take_along_axis(logp, reference[:, None], axis=1)[:, 0])
            out["correct"] = jnp.argmax(logp, axis=-1) == reference
        return out

    out = jax.lax.map(step, head_masks, batch_size=step_chunk)
    if classifier:
        out["reference"] = reference
    return out


def pruning_curve(model: ViT, images, scores, labels=None, most_important_first: bool = True,
                  num_pruned=None, batch_size: int = 16, step_chunk: int | None = None
                  ) -> PruningCurve:
    """Prune heads cumulatively in the order of `scores` and measure after each step.

    Args:
      model: a `ViT`; without a classifier only the feature change is measured.
      images: float32 `[N, height, width, channels]`, preprocessed.
      scores: `[L, H]` importance, larger = more important (e.g. `head_importance`,
        `taylor_importance`). Ties keep the flat head order.
      labels: optional int `[N]`; else the reference is the unpruned top-1 class (ignored
        without a classifier).
      most_important_first: prune the highest scores first (else the lowest first).
      num_pruned: int `[S]` numbers of pruned heads to measure; default 0, 1, ..., L*H.
      batch_size: images per jitted call (the last chunk is padded; fewer images:
        `batching.fitted_size`).
      step_chunk: steps vectorised together; default from a memory budget.
    Returns:
      a `PruningCurve`.
    """
    c = model.config
    scores = np.asarray(scores, np.float64)
    if scores.shape != (c.depth, c.num_heads):
        raise ValueError(f"scores must be [layers, heads] = [{c.depth}, {c.num_heads}]; "
                         f"got {scores.shape}")
    flat = scores.reshape(-1)
    order = np.argsort(-flat if most_important_first else flat, kind="stable")
    if num_pruned is None:
        num_pruned = np.arange(flat.size + 1)
    num_pruned = np.asarray(num_pruned, np.int64)
    if num_pruned.ndim != 1 or num_pruned.min() < 0 or num_pruned.max() > flat.size:
        raise ValueError(f"num_pruned must be a 1-d array in [0, {flat.size}]")
    head_masks = cumulative_head_masks(order, num_pruned, c.depth, c.num_heads)
    images = np.asarray(images, np.float32)
    batch_size = batching.fitted_size(images.shape[0], batch_size)
    if step_chunk is None:
        step_chunk = batching.variant_chunk(c, batch_size, len(num_pruned))
    classifier = c.num_classes > 0
    labels = check_labels(labels if classifier else None, images.shape[0], c.num_classes)
    graphdef, state = nnx.split(model)
    axes = {"feature_cos": 1, **({"prob": 1, "correct": 1, "reference": 0} if classifier else {})}
    out = batching.map_chunks(
        lambda images, labels: _curve_chunk(graphdef, state, images, labels, head_masks,
                                            int(step_chunk)),
        [images, labels], batch_size, fills=[0, -1], image_axes=axes)
    return PruningCurve(order=order, num_pruned=num_pruned, **out)
