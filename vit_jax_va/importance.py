"""Head importance by pruning every head alone (METHOD.md section 1, B1-B3).

`ablate_heads` prunes each head of each layer, wholly or partially (`vit_jax_va.masks`), and
reports per image what the pruning did to the prediction and to the representation (the pooled
features the classifier reads). Done naively that is one forward
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
  their queries attend to every key, but only their rows go through the projection and MLP;
- the mode "none", which equals the unpruned model and is copied from it.

Shapes: B images, L layers, H heads, T tokens, C width, D head dim, K classes, M modes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

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


def _array(*shape: str):
    """A `HeadAblation` array field whose shape, in the symbols of the module docstring, is
    `shape`; the per-field lists (image axes, per-head fields) are derived from these."""
    return dataclasses.field(metadata={"shape": shape})


@dataclasses.dataclass(frozen=True)
class HeadAblation:
    """What pruning each head alone did to each image. numpy arrays.

    Attributes:
      modes: the prune modes, in the order of the first axis of the per-head arrays.
      prob: `[M, L, H, B]` probability of the reference class after pruning.
      correct: `[M, L, H, B]` bool, top-1 prediction after pruning == reference class.
      loss: `[M, L, H, B]` cross-entropy of the reference class (nats).
      kl: `[M, L, H, B]` KL(unpruned || pruned) of the predicted distributions (nats).
      top5_classes: `[M, L, H, B, k]` int32 classes with the highest probability after
        pruning, most probable first (k = min(5, K)).
      top5_probs: `[M, L, H, B, k]` their probabilities.
      feature_cos: `[M, L, H, B]` 1 - cosine similarity of the pooled features (pre-logits)
        after pruning and unpruned: how far pruning turns the representation.
      feature_rel_l2: `[M, L, H, B]` |f_pruned - f| / |f| of the pooled features.
      baseline_prob, baseline_correct, baseline_loss: `[B]`, the same for the unpruned model.
      baseline_top5_classes, baseline_top5_probs: `[B, k]`.
      baseline_logits: `[B, K]` logits of the unpruned model.
      reference: `[B]` int32 reference class: the label when given, else the unpruned top-1.
      head_confidence: `[L, H, B]` Voita et al.'s confidence of each unpruned head
        (`vit_jax_va.strength.head_confidence`: mean over patch queries of the largest weight).
    """

    modes: tuple[str, ...]
    prob: np.ndarray = _array("M", "L", "H", "B")
    correct: np.ndarray = _array("M", "L", "H", "B")
    loss: np.ndarray = _array("M", "L", "H", "B")
    kl: np.ndarray = _array("M", "L", "H", "B")
    top5_classes: np.ndarray = _array("M", "L", "H", "B", "k")
    top5_probs: np.ndarray = _array("M", "L", "H", "B", "k")
    feature_cos: np.ndarray = _array("M", "L", "H", "B")
    feature_rel_l2: np.ndarray = _array("M", "L", "H", "B")
    baseline_prob: np.ndarray = _array("B")
    baseline_correct: np.ndarray = _array("B")
    baseline_loss: np.ndarray = _array("B")
    baseline_top5_classes: np.ndarray = _array("B", "k")
    baseline_top5_probs: np.ndarray = _array("B", "k")
    baseline_logits: np.ndarray = _array("B", "K")
    reference: np.ndarray = _array("B")
    head_confidence: np.ndarray = _array("L", "H", "B")

    @classmethod
    def shapes(cls) -> dict[str, tuple[str, ...]]:
        """Every array field and its shape in symbols, e.g. `{"prob": ("M", "L", "H", "B")}`."""
        return {f.name: f.metadata["shape"] for f in dataclasses.fields(cls) if "shape" in f.metadata}

    @classmethod
    def per_head_fields(cls) -> tuple[str, ...]:
        """The fields with a value per (mode, layer, head, image)."""
        return tuple(k for k, shape in cls.shapes().items() if shape[0] == "M")

    @classmethod
    def image_axes(cls) -> dict[str, int]:
        """Each array field's image axis."""
        return {k: shape.index("B") for k, shape in cls.shapes().items()}

    def mode_index(self, prune_mode: str) -> int:
        """Index of `prune_mode` along the first axis of the per-head arrays."""
        if prune_mode not in self.modes:
            raise KeyError(f"prune_mode {prune_mode!r} was not swept; swept: {self.modes}")
        return self.modes.index(prune_mode)

    def take(self, images) -> "HeadAblation":
        """The results of some images only: `images` indexes the image axis (an int, int array,
        slice or bool mask); the image axis is kept."""
        index = np.atleast_1d(np.arange(self.reference.shape[0])[images])
        return dataclasses.replace(self, **{k: np.take(getattr(self, k), index, axis=axis)
                                            for k, axis in self.image_axes().items()})


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


def _metrics(logits: jax.Array, features: jax.Array, reference: jax.Array, baseline_logp: jax.Array,
             baseline_features: jax.Array) -> dict:
    """Per-image metrics of logits `[B, K]` against the reference classes `[B]`, and of the
    pooled features `[B, C]` against the unpruned ones."""
    norm = jnp.linalg.norm(features, axis=-1)
    baseline_norm = jnp.linalg.norm(baseline_features, axis=-1)
    tiny = jnp.float32(1e-12)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ref_logp = jnp.take_along_axis(logp, reference[:, None], axis=1)[:, 0]
    probs = jnp.exp(logp)
    top_probs, top_classes = jax.lax.top_k(probs, min(TOP_K, logits.shape[-1]))
    return dict(
        prob=jnp.exp(ref_logp),
        correct=jnp.argmax(logp, axis=-1) == reference,
        loss=-ref_logp,
        kl=jnp.sum(jnp.exp(baseline_logp) * (baseline_logp - logp), axis=-1),
        top5_classes=top_classes.astype(jnp.int32),
        top5_probs=top_probs,
        feature_cos=1 - jnp.sum(features * baseline_features, axis=-1) / jnp.maximum(norm * baseline_norm, tiny),
        feature_rel_l2=jnp.linalg.norm(features - baseline_features, axis=-1) / jnp.maximum(baseline_norm, tiny),
    )


def unpruned_pass(model: ViT, images: jax.Array, labels: jax.Array):
    """Unpruned pass: each layer's input `[L, B, T, C]`, confidence `[L, H, B]`, logits `[B, K]`,
    reference classes `[B]` (label where `labels >= 0`, else the unpruned top-1) and pooled
    features `[B, C]`."""
    block_graphdef, stacked = _stack_blocks(model)
    prefix = model.config.num_prefix_tokens

    def step(x, block_state):
        out, attention = nnx.merge(block_graphdef, block_state)(x)
        return out, (x, head_confidence(attention, prefix).T)

    x, (layer_inputs, confidence) = jax.lax.scan(step, model.embed(images), stacked)
    logits, features = model.classify(x)
    return layer_inputs, confidence, logits, reference_class(logits, labels), features


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


def _sweep_chunk(graphdef, state, images, labels, removed, *, variant_chunk: int):
    """Every (mode, layer, head) pruning of one image chunk.

    Args:
      graphdef, state: `nnx.split(model)`.
      images: `[B, height, width, channels]`; labels: int32 `[B]`, -1 for "use the prediction".
      removed: float32 `[M, T, T]`, 1 inside the region each mode zeroes.
      variant_chunk: (mode, head) pairs vectorised together.
    Returns:
      per-head metrics `[L, M, H, B(, k)]` and baseline metrics `[B(, k)]`, as a dict.
    """
    model = nnx.merge(graphdef, state)
    c = model.config
    num_modes, depth, heads = removed.shape[0], c.depth, c.num_heads
    layer_inputs, confidence, logits, reference, features = unpruned_pass(model, images, labels)
    baseline_logp = jax.nn.log_softmax(logits, axis=-1)

    def metrics(y):
        return _metrics(*model.classify(y), reference, baseline_logp, features)

    block_graphdef, stacked = _stack_blocks(model)
    rows = model.classifier_rows
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
                            (jnp.arange(scanned), layer_inputs[:scanned]))
    if rows is not None:
        block, x = model.blocks[depth - 1], layer_inputs[depth - 1]
        last = _prune_layer(block, x[:, :rows], block.heads(x, rows), removed[:, :rows],
                            variants, variant_chunk, metrics)
        swept = {k: jnp.concatenate([swept[k], last[k][None]]) for k in swept}
    # [L, M*H, B, ...] -> [L, M, H, B, ...]
    swept = {k: v.reshape(depth, num_modes, heads, *v.shape[2:]) for k, v in swept.items()}
    base = _metrics(logits, features, reference, baseline_logp, features)
    swept.update({f"baseline_{k}": base[k] for k in ("prob", "correct", "loss", "top5_classes",
                                                     "top5_probs")})
    swept.update(baseline_logits=logits, reference=reference, head_confidence=confidence)
    return swept


def _batch_spec(mesh: Mesh, ndim: int, axis: int) -> PartitionSpec:
    """Split axis `axis` of an `ndim`-array over every axis of the mesh."""
    spec = [None] * ndim
    spec[axis] = tuple(mesh.axis_names)
    return PartitionSpec(*spec)


@functools.lru_cache(maxsize=32)
def _compiled_sweep(graphdef, variant_chunk: int, mesh: Mesh | None):
    """The jitted sweep for one model structure; jax caches its compilations per input shape."""
    fn = functools.partial(_sweep_chunk, graphdef, variant_chunk=variant_chunk)
    if mesh is not None:
        # Images are independent, so data parallelism is a shard_map over the batch with
        # replicated weights; no communication at all.
        fn = jax.shard_map(
            fn, mesh=mesh,
            in_specs=(PartitionSpec(), _batch_spec(mesh, 4, 0), _batch_spec(mesh, 1, 0),
                      PartitionSpec()),
            out_specs={k: _batch_spec(mesh, len(shape), shape.index("B"))
                       for k, shape in HeadAblation.shapes().items()})
    return jax.jit(fn)


def ablate_heads(model: ViT, images, labels=None, modes: tuple[str, ...] = ("head",),
                 batch_size: int = 16, variant_chunk: int | None = None,
                 mesh: Mesh | None = None) -> HeadAblation:
    """Prune every head alone, in every prune mode, and measure each image's prediction.

    Equals one forward pass `model(images, head_mask=...)` ("head") or
    `model(images, region_mask=...)` (the partial modes) per (mode, layer, head), to float32
    rounding, at a fraction of the cost (see the module docstring).

    Args:
      model: a `ViT` with a classifier (`num_classes > 0`). Not modified.
      images: float32 `[N, height, width, channels]`, preprocessed.
      labels: optional int `[N]` true classes; they become the reference class. Without them
        the reference is the unpruned model's top-1 prediction.
      modes: prune modes from `vit_jax_va.masks.PRUNE_MODES`; "head" prunes the whole head.
      batch_size: images per jitted call. The last chunk is padded, so every call has the same
        shape and the sweep compiles once; with a mesh it is rounded up to a multiple of the
        number of devices.
      variant_chunk: (mode, head) pairs vectorised together; default from a memory budget.
      mesh: split each image chunk over the mesh's devices (data parallel). Results equal the
        single-device ones to float32 rounding. A mesh may span several processes
        (`jax.distributed`): each process then passes the same images and gets every result.
    Returns:
      a `HeadAblation` with per-head arrays `[M, L, H, N]` and baseline arrays `[N]`.
    """
    c = model.config
    if c.num_classes <= 0:
        raise ValueError("ablate_heads needs a model with a classifier (num_classes > 0); for a backbone, "
                         "fit one with vit_jax_va.probe.fit_probe (vit-va probe)")
    modes = tuple(modes)
    unknown = [m for m in modes if m not in PRUNE_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {PRUNE_MODES}; got {modes}")
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    labels = check_labels(labels, n, c.num_classes)
    if mesh is not None:
        batch_size = math.ceil(batch_size / mesh.size) * mesh.size
    # "none" changes nothing: it is filled from the unpruned pass, not swept.
    swept_modes = tuple(m for m in modes if m != "none") or ("head",)
    removed = np.stack([prune_region(m, c.num_tokens, c.num_prefix_tokens)
                        for m in swept_modes]).astype(np.float32)
    if variant_chunk is None:
        variant_chunk = batching.variant_chunk(c, batch_size, len(swept_modes) * c.num_heads)
    graphdef, state = nnx.split(model)
    sweep = _compiled_sweep(graphdef, int(variant_chunk), mesh)


    def place(chunk):
        if mesh is None:
            return chunk
        return [jax.device_put(a, jax.sharding.NamedSharding(mesh, _batch_spec(mesh, a.ndim, 0)))
                for a in chunk]

    out = batching.map_chunks(lambda images, labels: sweep(state, images, labels, removed),
                              [images, labels], batch_size, fills=[0, -1],
                              image_axes=HeadAblation.image_axes(), place=place)
    per_head = HeadAblation.per_head_fields()
    return HeadAblation(modes=modes, **_arrange_modes(out, modes, swept_modes),
                        **{k: v for k, v in out.items() if k not in per_head})


def _arrange_modes(out: dict, modes: tuple[str, ...], swept_modes: tuple[str, ...]) -> dict:
    """Per-head arrays `[L, M_swept, H, B]` -> `[M, L, H, B]` in the order of `modes`, with
    "none" copied from the baseline."""
    depth, _, heads = out["prob"].shape[:3]
    arranged = {}
    for key in HeadAblation.per_head_fields():
        per_mode = []
        for mode in modes:
            if mode == "none":
                if key in ("kl", "feature_cos", "feature_rel_l2"):  # unpruned against itself
                    value = np.zeros_like(out["baseline_prob"])
                else:
                    value = out[f"baseline_{key}"]
                per_mode.append(np.broadcast_to(value, (depth, heads, *value.shape)))
            else:
                per_mode.append(out[key][:, swept_modes.index(mode)])
        arranged[key] = np.stack(per_mode)
    return arranged
