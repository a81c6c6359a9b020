"""Head importance by pruning every head alone (METHOD.md section 1, B1-B3).

`ablate_heads` prunes each head of each layer, wholly or partially (`vit_jax_va.masks`), and
reports per image what the pruning did to the prediction and to the representation (the pooled
features the classifier reads; as an option the last layer's patch tokens). A model without a
classifier (a backbone: DINOv2, CLIP, MAE towers) gets the representation metrics only. Done naively that is one forward
pass per (mode, layer, head). Here it is one jitted program per image chunk: a scan over the
pruned layer, and within it the (mode, head) pairs vectorised with `jax.vmap` in chunks
(`lax.map(..., batch_size=variant_chunk)`) so that memory stays bounded. It skips what pruning
cannot change:

- the layers before the pruned one: the unpruned model runs once and keeps each layer's input
  residual stream; pruned passes start at the pruned layer;
- the other heads of the pruned layer: the projection is linear, so the pruned layer's
  attention output is the unpruned output minus the pruned region's contribution through the
  head's slice of the projection weights;
- with class-token pooling, everything in the last layer that the pooled tokens do not need:
  their queries attend to every key, but only their rows go through the projection and MLP
  (unless the patch tokens are measured);
- the mode "none", which equals the unpruned model and is copied from it.

Shapes: B images, L layers, H heads, T tokens, C width, D head dim, K classes, M modes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from vit_jax_va import batching
from vit_jax_va.masks import PRUNE_MODES, prune_region
from vit_jax_va.model import ViT
from vit_jax_va.reference import check_labels, reference_class
from vit_jax_va.strength import head_confidence

TOP_K = 5


def _array(*shape: str, needs: str | None = None):
    """A `HeadAblation` array field whose shape, in the symbols of the module docstring, is
    `shape`; the per-field lists (image axes, per-head fields) are derived from these. `needs`:
    "classifier" (a field of the prediction, None for a backbone) or "patch" (the patch-token
    metrics, None unless asked for)."""
    return dataclasses.field(default=None, metadata={"shape": shape, "needs": needs})


@dataclasses.dataclass(frozen=True)
class HeadAblation:
    """What pruning each head alone did to each image. numpy arrays.

    The fields of the prediction (marked *classifier*) are None for a model without a
    classifier (a backbone): there is no class to measure. The patch-token fields are None
    unless `ablate_heads(..., patch_tokens=True)`.

    Attributes:
      modes: the prune modes, in the order of the first axis of the per-head arrays.
      prob: `[M, L, H, B]` probability of the reference class after pruning (*classifier*).
      correct: `[M, L, H, B]` bool, top-1 prediction after pruning == reference class
        (*classifier*).
      loss: `[M, L, H, B]` cross-entropy of the reference class (nats; *classifier*).
      kl: `[M, L, H, B]` KL(unpruned || pruned) of the predicted distributions (nats;
        *classifier*).
      top5_classes: `[M, L, H, B, k]` int32 classes with the highest probability after
        pruning, most probable first (k = min(5, K); *classifier*).
      top5_probs: `[M, L, H, B, k]` their probabilities (*classifier*).
      feature_cos: `[M, L, H, B]` 1 - cosine similarity of the pooled features (pre-logits)
        after pruning and unpruned: how far pruning turns the representation.
      feature_rel_l2: `[M, L, H, B]` |f_pruned - f| / |f| of the pooled features.
      patch_cos: `[M, L, H, B]` the mean over the last layer's P patch tokens (after the final
        norm) of 1 - cosine similarity, pruned against unpruned (*patch*).
      patch_rel_l2: `[M, L, H, B]` the mean over patch tokens of |t_pruned - t| / |t| (*patch*).
      baseline_prob, baseline_correct, baseline_loss: `[B]`, the same for the unpruned model
        (*classifier*).
      baseline_top5_classes, baseline_top5_probs: `[B, k]` (*classifier*).
      baseline_logits: `[B, K]` logits of the unpruned model (*classifier*).
      reference: `[B]` int32 reference class: the label when given, else the unpruned top-1
        (*classifier*).
      head_confidence: `[L, H, B]` Voita et al.'s confidence of each unpruned head
        (`vit_jax_va.strength.head_confidence`: mean over patch queries of the largest weight).
    """

    modes: tuple[str, ...]
    prob: np.ndarray | None = _array("M", "L", "H", "B", needs="classifier")
    correct: np.ndarray | None = _array("M", "L", "H", "B", needs="classifier")
    loss: np.ndarray | None = _array("M", "L", "H", "B", needs="classifier")
    kl: np.ndarray | None = _array("M", "L", "H", "B", needs="classifier")
    top5_classes: np.ndarray | None = _array("M", "L", "H", "B", "k", needs="classifier")
    top5_probs: np.ndarray | None = _array("M", "L", "H", "B", "k", needs="classifier")
    feature_cos: np.ndarray = _array("M", "L", "H", "B")
    feature_rel_l2: np.ndarray = _array("M", "L", "H", "B")
    patch_cos: np.ndarray | None = _array("M", "L", "H", "B", needs="patch")
    patch_rel_l2: np.ndarray | None = _array("M", "L", "H", "B", needs="patch")
    baseline_prob: np.ndarray | None = _array("B", needs="classifier")
    baseline_correct: np.ndarray | None = _array("B", needs="classifier")
    baseline_loss: np.ndarray | None = _array("B", needs="classifier")
    baseline_top5_classes: np.ndarray | None = _array("B", "k", needs="classifier")
    baseline_top5_probs: np.ndarray | None = _array("B", "k", needs="classifier")
    baseline_logits: np.ndarray | None = _array("B", "K", needs="classifier")
    reference: np.ndarray | None = _array("B", needs="classifier")
    head_confidence: np.ndarray = _array("L", "H", "B")

    @classmethod
    def shapes(cls, classifier: bool = True, patch_tokens: bool = True) -> dict[str, tuple[str, ...]]:
        """The array fields and their shapes in symbols, e.g. `{"prob": ("M", "L", "H", "B")}`:
        all of them, or those a sweep with(out) a classifier and patch-token metrics fills."""
        wanted = {None, *(["classifier"] if classifier else []), *(["patch"] if patch_tokens else [])}
        return {f.name: f.metadata["shape"] for f in dataclasses.fields(cls)
                if "shape" in f.metadata and f.metadata["needs"] in wanted}

    @classmethod
    def per_head_fields(cls, classifier: bool = True, patch_tokens: bool = True) -> tuple[str, ...]:
        """The fields with a value per (mode, layer, head, image)."""
        return tuple(k for k, shape in cls.shapes(classifier, patch_tokens).items() if shape[0] == "M")

    @classmethod
    def image_axes(cls, classifier: bool = True, patch_tokens: bool = True) -> dict[str, int]:
        """Each array field's image axis."""
        return {k: shape.index("B") for k, shape in cls.shapes(classifier, patch_tokens).items()}

    @property
    def has_classifier(self) -> bool:
        """Whether the fields of the prediction are there (the model had a classifier)."""
        return self.prob is not None

    def arrays(self) -> dict[str, np.ndarray]:
        """The array fields that are not None."""
        return {k: getattr(self, k) for k in self.shapes() if getattr(self, k) is not None}

    def mode_index(self, prune_mode: str) -> int:
        """Index of `prune_mode` along the first axis of the per-head arrays."""
        if prune_mode not in self.modes:
            raise KeyError(f"prune_mode {prune_mode!r} was not swept; swept: {self.modes}")
        return self.modes.index(prune_mode)

    def take(self, images) -> "HeadAblation":
        """The results of some images only: `images` indexes the image axis (an int, int array,
        slice or bool mask); the image axis is kept."""
        index = np.atleast_1d(np.arange(self.feature_cos.shape[-1])[images])
        axes = self.image_axes()
        return dataclasses.replace(self, **{k: np.take(v, index, axis=axes[k])
                                            for k, v in self.arrays().items()})


def probability_drop(baseline_prob, prob) -> np.ndarray:
    """The mean drop of the reference-class probability when each head is pruned: `[L, H]`
    float64 from `baseline_prob` `[N]` and `prob` `[L, H, N]` (one prune mode); larger means
    pruning hurts more. The sweep ranks heads by it (its summary, the pruning curve)."""
    baseline = np.asarray(baseline_prob, np.float64)
    return (baseline - np.asarray(prob, np.float64)).mean(axis=-1)


# The model's stages, run the sweep's way ---------------------------------------------------
# Every number comes from `vit_jax_va.model` (`Block.heads`, `Attention.project`,
# `Attention.head_projection`, `Block.finish`, `Block(..., rows=)`): there is one forward pass.

def _stack_blocks(model: ViT) -> tuple[nnx.GraphDef, nnx.State]:
    """One block's graphdef and every block's state stacked on a leading layer axis, so that a
    loop over layers traces one block body instead of one per layer."""
    graphdefs, states = zip(*(nnx.split(block) for block in model.blocks))
    return graphdefs[0], jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def _run_blocks(block_graphdef, stacked, x: jax.Array, start, stop) -> jax.Array:
    """Blocks `start..stop-1` on `x` `[B, T, C]`; the bounds may be traced."""
    def body(layer, x):
        return nnx.merge(block_graphdef, jax.tree.map(lambda p: p[layer], stacked))(x)[0]
    return jax.lax.fori_loop(start, stop, body, x)


def change(new: jax.Array, old: jax.Array) -> tuple[jax.Array, jax.Array]:
    """How far vectors moved, over the last axis of `new` and `old` `[..., C]`: (1 - cosine
    similarity, |new - old| / |old|), each `[...]`."""
    norm, old_norm = jnp.linalg.norm(new, axis=-1), jnp.linalg.norm(old, axis=-1)
    tiny = jnp.float32(1e-12)
    return (1 - jnp.sum(new * old, axis=-1) / jnp.maximum(norm * old_norm, tiny),
            jnp.linalg.norm(new - old, axis=-1) / jnp.maximum(old_norm, tiny))


def _class_metrics(logits: jax.Array, reference: jax.Array, baseline_logp: jax.Array) -> dict:
    """Per-image metrics of logits `[B, K]` against the reference classes `[B]` and the
    unpruned log-probabilities `[B, K]`."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref_logp = jnp.take_along_axis(logp, reference[:, None], axis=1)[:, 0]
    top_probs, top_classes = jax.lax.top_k(jnp.exp(logp), min(TOP_K, logits.shape[-1]))
    return dict(
        prob=jnp.exp(ref_logp),
        correct=jnp.argmax(logp, axis=-1) == reference,
        loss=-ref_logp,
        kl=jnp.sum(jnp.exp(baseline_logp) * (baseline_logp - logp), axis=-1),
        top5_classes=top_classes.astype(jnp.int32),
        top5_probs=top_probs,
    )


class Unpruned(NamedTuple):
    """The unpruned pass of `unpruned_pass`."""

    layer_inputs: jax.Array  # [L, B, T, C] each layer's input residual stream
    confidence: jax.Array    # [L, H, B] head confidence
    logits: jax.Array        # [B, K] (the pooled features for a backbone)
    reference: jax.Array | None  # [B] reference classes (None for a backbone)
    features: jax.Array      # [B, C] pooled features
    tokens: jax.Array        # [B, T, C] the last layer's output


def unpruned_pass(model: ViT, images: jax.Array, labels: jax.Array) -> Unpruned:
    """The unpruned model on `images`, keeping what the pruned passes start from and compare
    with (`Unpruned`); the reference is the label where `labels >= 0`, else the unpruned top-1."""
    block_graphdef, stacked = _stack_blocks(model)
    prefix = model.config.num_prefix_tokens

    def step(x, block_state):
        out, attention = nnx.merge(block_graphdef, block_state)(x)
        return out, (x, head_confidence(attention, prefix).T)

    x, (layer_inputs, confidence) = jax.lax.scan(step, model.embed(images), stacked)
    logits, features = model.classify(x)
    reference = reference_class(logits, labels) if model.config.num_classes > 0 else None
    return Unpruned(layer_inputs, confidence, logits, reference, features, x)


# The sweep ---------------------------------------------------------------------------------

def _prune_layer(block, x, heads, removed, variants, variant_chunk, tail):
    """Prune each (mode, head) variant of one layer and finish the pass with `tail`.

    Args:
      block: the pruned layer's `Block`; x: its input residual stream `[B, R, C]` (R rows,
        T or the pooled ones); heads: its unpruned `Block.heads` (attention `[B, R, T]`,
        values `[B, T, D]` per head); removed: `[M, R, T]`; variants: (mode index, head
        index) `[V]`.
      tail: residual stream after the pruned layer `[B, R, C]` -> per-image metrics.
    Returns:
      the metrics of every variant, stacked: `[V, B, ...]`.
    """
    b, r, width = x.shape
    attn_out = block.attn.project([a @ v for a, v in heads])
    # Stacked so that a variant can pick its head with a traced index: [H, B, R, T], [H, B, T, D].
    attention, v = jnp.stack([a for a, _ in heads]), jnp.stack([v for _, v in heads])
    proj_by_head = block.attn.head_projection()  # [H, D, C]

    def prune_one(variant):
        m, h = variant
        # The projection is linear: subtract the pruned region's share of head h's output.
        removed_heads = (attention[h] * removed[m][None]) @ v[h]
        removed_out = removed_heads.reshape(b * r, -1) @ proj_by_head[h]
        return tail(block.finish(x, attn_out - removed_out.reshape(b, r, width)))

    return jax.lax.map(prune_one, variants, batch_size=variant_chunk)


def _sweep_chunk(graphdef, state, images, labels, removed, *, variant_chunk: int,
                 patch_tokens: bool = False):
    """Every (mode, layer, head) pruning of one image chunk.

    Args:
      graphdef, state: `nnx.split(model)`.
      images: `[B, height, width, channels]`; labels: int32 `[B]`, -1 for "use the prediction".
      removed: float32 `[M, T, T]`, 1 inside the region each mode zeroes.
      variant_chunk: (mode, head) pairs vectorised together.
      patch_tokens: also measure the last layer's patch tokens (then every row of the last
        layer is computed, not only the pooled ones).
    Returns:
      per-head metrics `[L, M, H, B(, k)]` and baseline metrics `[B(, k)]`, as a dict: the
      `HeadAblation.shapes(classifier, patch_tokens)` fields.
    """
    model = nnx.merge(graphdef, state)
    c = model.config
    classifier = c.num_classes > 0
    num_modes, depth, heads = removed.shape[0], c.depth, c.num_heads
    base = unpruned_pass(model, images, labels)
    baseline_logp = jax.nn.log_softmax(base.logits, axis=-1)
    baseline_patches = model.patch_tokens(base.tokens) if patch_tokens else None

    def metrics(y):
        logits, features = model.classify(y)
        out = dict(zip(("feature_cos", "feature_rel_l2"), change(features, base.features)))
        if classifier:
            out.update(_class_metrics(logits, base.reference, baseline_logp))
        if patch_tokens:
            cos, rel = change(model.patch_tokens(y), baseline_patches)
            out.update(patch_cos=cos.mean(axis=-1), patch_rel_l2=rel.mean(axis=-1))
        return out

    block_graphdef, stacked = _stack_blocks(model)
    rows = None if patch_tokens else model.classifier_rows
    variants = (jnp.repeat(jnp.arange(num_modes), heads), jnp.tile(jnp.arange(heads), num_modes))
    # With class-token pooling the last layer is special (only its pooled rows are needed), so
    # it is pruned on its own and the scan covers the layers before it.
    scanned = depth if rows is None else depth - 1
    tail_stop = scanned

    def prune_scanned_layer(_, layer_and_input):
        layer, x = layer_and_input
        block = nnx.merge(block_graphdef, jax.tree.map(lambda p: p[layer], stacked))

        def tail(y):
            y = _run_blocks(block_graphdef, stacked, y, layer + 1, tail_stop)
            if rows is not None:
                y = model.blocks[depth - 1](y, rows=rows)[0]
            return metrics(y)

        return None, _prune_layer(block, x, block.heads(x), removed, variants, variant_chunk,
                                  tail)

    # One traced body for all layers (the tail's trip count is dynamic) keeps compilation
    # time independent of depth.
    _, swept = jax.lax.scan(prune_scanned_layer, None,
                            (jnp.arange(scanned), base.layer_inputs[:scanned]))
    if rows is not None:
        block, x = model.blocks[depth - 1], base.layer_inputs[depth - 1]
        last = _prune_layer(block, x[:, :rows], block.heads(x, rows), removed[:, :rows],
                            variants, variant_chunk, metrics)
        swept = {k: jnp.concatenate([swept[k], last[k][None]]) for k in swept}
    # [L, M*H, B, ...] -> [L, M, H, B, ...]
    swept = {k: v.reshape(depth, num_modes, heads, *v.shape[2:]) for k, v in swept.items()}
    swept["head_confidence"] = base.confidence
    if classifier:
        unpruned = _class_metrics(base.logits, base.reference, baseline_logp)
        swept.update({f"baseline_{k}": unpruned[k] for k in ("prob", "correct", "loss", "top5_classes",
                                                             "top5_probs")})
        swept.update(baseline_logits=base.logits, reference=base.reference)
    return swept


def _batch_spec(mesh: Mesh, ndim: int, axis: int) -> PartitionSpec:
    """Split axis `axis` of an `ndim`-array over every axis of the mesh."""
    spec = [None] * ndim
    spec[axis] = tuple(mesh.axis_names)
    return PartitionSpec(*spec)


@functools.lru_cache(maxsize=32)
def _compiled_sweep(graphdef, variant_chunk: int, mesh: Mesh | None, patch_tokens: bool,
                    classifier: bool):
    """The jitted sweep for one model structure; jax caches its compilations per input shape."""
    fn = functools.partial(_sweep_chunk, graphdef, variant_chunk=variant_chunk,
                           patch_tokens=patch_tokens)
    if mesh is not None:
        # Images are independent, so data parallelism is a shard_map over the batch with
        # replicated weights; no communication at all.
        fn = jax.shard_map(
            fn, mesh=mesh,
            in_specs=(PartitionSpec(), _batch_spec(mesh, 4, 0), _batch_spec(mesh, 1, 0),
                      PartitionSpec()),
            out_specs={k: _batch_spec(mesh, len(shape), shape.index("B"))
                       for k, shape in HeadAblation.shapes(classifier, patch_tokens).items()})
    return jax.jit(fn)


def ablate_heads(model: ViT, images, labels=None, modes: tuple[str, ...] = ("head",),
                 batch_size: int = 16, variant_chunk: int | None = None,
                 mesh: Mesh | None = None, patch_tokens: bool = False) -> HeadAblation:
    """Prune every head alone, in every prune mode, and measure each image's prediction and
    pooled features (and, with `patch_tokens`, the last layer's patch tokens).

    Equals one forward pass `model(images, head_mask=...)` ("head") or
    `model(images, region_mask=...)` (the partial modes) per (mode, layer, head), to float32
    rounding, at a fraction of the cost (see the module docstring).

    Args:
      model: a `ViT`. Not modified. Without a classifier (`num_classes == 0`, a backbone)
        only the feature metrics are measured; the fields of the prediction are None.
      images: float32 `[N, height, width, channels]`, preprocessed.
      labels: optional int `[N]` true classes; they become the reference class. Without them
        the reference is the unpruned model's top-1 prediction. A backbone ignores them.
      modes: prune modes from `vit_jax_va.masks.PRUNE_MODES`; "head" prunes the whole head.
      batch_size: images per jitted call. The last chunk is padded, so every call has the same
        shape and the sweep compiles once (fewer images: `batching.fitted_size`); with a mesh it is rounded up to a multiple of the
        number of devices.
      variant_chunk: (mode, head) pairs vectorised together; default from a memory budget.
      mesh: split each image chunk over the mesh's devices (data parallel). Results equal the
        single-device ones to float32 rounding. A mesh may span several processes
        (`jax.distributed`): each process then passes the same images and gets every result.
      patch_tokens: also measure `patch_cos` and `patch_rel_l2` (the last layer's patch
        tokens, which dense-prediction heads read). With class-token pooling this costs the
        last layer's full rows.
    Returns:
      a `HeadAblation` with per-head arrays `[M, L, H, N]` and baseline arrays `[N]`.
    """
    c = model.config
    classifier = c.num_classes > 0
    modes = tuple(modes)
    unknown = [m for m in modes if m not in PRUNE_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {PRUNE_MODES}; got {modes}")
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    labels = check_labels(labels if classifier else None, n, c.num_classes)
    batch_size = batching.fitted_size(n, batch_size)
    if mesh is not None:
        batch_size = math.ceil(batch_size / mesh.size) * mesh.size
    # "none" changes nothing: it is filled from the unpruned pass, not swept.
    swept_modes = tuple(m for m in modes if m != "none") or ("head",)
    removed = np.stack([prune_region(m, c.num_tokens, c.num_prefix_tokens)
                        for m in swept_modes]).astype(np.float32)
    if variant_chunk is None:
        variant_chunk = batching.variant_chunk(c, batch_size, len(swept_modes) * c.num_heads)
    graphdef, state = nnx.split(model)
    patch_tokens = bool(patch_tokens)
    sweep = _compiled_sweep(graphdef, int(variant_chunk), mesh, patch_tokens, classifier)

    def place(chunk):
        if mesh is None:
            return chunk
        return [jax.device_put(a, jax.sharding.NamedSharding(mesh, _batch_spec(mesh, a.ndim, 0)))
                for a in chunk]

    out = batching.map_chunks(lambda images, labels: sweep(state, images, labels, removed),
                              [images, labels], batch_size, fills=[0, -1],
                              image_axes=HeadAblation.image_axes(classifier, patch_tokens), place=place)
    per_head = HeadAblation.per_head_fields(classifier, patch_tokens)
    return HeadAblation(modes=modes, **_arrange_modes(out, modes, swept_modes, per_head),
                        **{k: v for k, v in out.items() if k not in per_head})


# What the mode "none" (the unpruned model) is, per per-head field: 0 for a change against the
# unpruned model, else the baseline value.
_UNCHANGED = ("kl", "feature_cos", "feature_rel_l2", "patch_cos", "patch_rel_l2")


def _arrange_modes(out: dict, modes: tuple[str, ...], swept_modes: tuple[str, ...],
                   per_head: tuple[str, ...]) -> dict:
    """Per-head arrays `[L, M_swept, H, B]` -> `[M, L, H, B]` in the order of `modes`, with
    "none" copied from the baseline."""
    depth, _, heads = out["feature_cos"].shape[:3]
    arranged = {}
    for key in per_head:
        per_mode = []
        for mode in modes:
            if mode == "none":
                if key in _UNCHANGED:
                    value = np.zeros_like(out["feature_cos"][0, 0, 0])
                else:
                    value = out[f"baseline_{key}"]
                per_mode.append(np.broadcast_to(value, (depth, heads, *value.shape)))
            else:
                per_mode.append(out[key][:, swept_modes.index(mode)])
        arranged[key] = np.stack(per_mode)
    return arranged
