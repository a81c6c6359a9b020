"""Head importance by pruning every head alone (METHOD.md section 1, B1-B3).

`ablate_heads` prunes each head of each layer, wholly or partially (`vit_jax_va.masks`), and
reports per image what the pruning did to the prediction. Done naively that is one forward
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

from vit_jax_va.masks import PRUNE_MODES, prune_region
from vit_jax_va.model import ViT
from vit_jax_va.strength import head_confidence

TOP_K = 5

# Bytes of the widest activation ([variants, B, T, hidden] float32) of one vectorised chunk of
# pruned passes. Larger chunks were slower on a 2-core CPU (vit_tiny, 16 images, an earlier
# layout of the same sweep: 4 variants ~5 s, 36 variants ~10 s), presumably because a chunk
# then no longer fits the 32 MB L3 cache.
_VARIANT_MEMORY_BUDGET = 48 * 2**20


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
      baseline_prob, baseline_correct, baseline_loss: `[B]`, the same for the unpruned model.
      baseline_top5_classes, baseline_top5_probs: `[B, k]`.
      baseline_logits: `[B, K]` logits of the unpruned model.
      reference: `[B]` int32 reference class: the label when given, else the unpruned top-1.
      head_confidence: `[L, H, B]` Voita et al.'s confidence of each unpruned head
        (`vit_jax_va.strength.head_confidence`: mean over patch queries of the largest weight).
    """

    modes: tuple[str, ...]
    prob: np.ndarray
    correct: np.ndarray
    loss: np.ndarray
    kl: np.ndarray
    top5_classes: np.ndarray
    top5_probs: np.ndarray
    baseline_prob: np.ndarray
    baseline_correct: np.ndarray
    baseline_loss: np.ndarray
    baseline_top5_classes: np.ndarray
    baseline_top5_probs: np.ndarray
    baseline_logits: np.ndarray
    reference: np.ndarray
    head_confidence: np.ndarray

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
                                            for k, axis in _BATCH_AXIS.items()})


_PER_HEAD = ("prob", "correct", "loss", "kl", "top5_classes", "top5_probs")
_BASELINE = ("baseline_prob", "baseline_correct", "baseline_loss", "baseline_top5_classes",
             "baseline_top5_probs", "baseline_logits", "reference")


# Pieces of the forward pass ----------------------------------------------------------------

def _pooled_rows(model: ViT) -> int | None:
    """How many leading tokens the classifier reads after the last block (None: all of them)."""
    c = model.config
    if c.pool == "token":
        return 1 + int(c.distillation_token)
    return None


def _stack_blocks(model: ViT) -> tuple[nnx.GraphDef, nnx.State]:
    """One block's graphdef and every block's state stacked on a leading layer axis, so that a
    loop over layers traces one block body instead of one per layer."""
    graphdefs, states = zip(*(nnx.split(block) for block in model.blocks))
    return graphdefs[0], jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


# The sweep's own block. Same mathematics as `Block.__call__`, laid out for speed on CPU
# (vit_tiny, 48 sequences, timed alone: ~35 ms against ~80 ms for `Block.__call__`):
# - tokens flattened to 2-D rows for every dense layer (XLA's CPU dot on a [B, T, C] operand
#   was ~1.7x slower than on [B*T, C]);
# - one query/key/value matmul per head, each giving [B, T, D] directly: the [B, T, H, D]
#   einsums of the model were ~2.6x slower, and transposing the fused qkv to [B, H, T, D] cost
#   more than the narrower matmuls (~25% of the attention half for 3 and for 12 heads);
# - GELU as 0.5 x (1 + erf(x / sqrt 2)), torch's formula, instead of jax's erfc form (~13% of
#   an MLP).
# Results agree with the model to float32 rounding (the tests hold them to 1e-5).

def _heads(block, x: jax.Array, rows: int | None = None) -> list[tuple[jax.Array, jax.Array]]:
    """Per head, the attention `[B, R, T]` of the first R query rows (all when `rows` is None)
    and the values `[B, T, D]`, from the block's input residual stream `x` `[B, T, C]`."""
    attn = block.attn
    b, t, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    xn = block.norm1(x.reshape(b * t, width))
    kernel = attn.qkv.kernel[...].reshape(width, 3, heads, head_dim)
    bias = None if attn.qkv.bias is None else attn.qkv.bias[...].reshape(3, heads, head_dim)

    def project(which, h):
        out = xn @ kernel[:, which, h]
        return (out if bias is None else out + bias[which, h][None]).reshape(b, t, head_dim)

    out = []
    for h in range(heads):
        q, k, v = project(0, h), project(1, h), project(2, h)
        if rows is not None:
            q = q[:, :rows]
        # Same scaling order as `Attention.weights` (q before the product), as timm does.
        q = q * jnp.float32(head_dim ** -0.5)
        out.append((jax.nn.softmax(q @ k.swapaxes(-1, -2), axis=-1), v))
    return out


def _project_heads(block, head_outputs: list[jax.Array]) -> jax.Array:
    """The output projection of the heads' outputs (each `[B, R, D]`): `[B*R, C]`."""
    proj = block.attn.proj
    b, r, head_dim = head_outputs[0].shape
    kernel = proj.kernel[...]
    out = sum(o.reshape(b * r, head_dim) @ kernel[h * head_dim:(h + 1) * head_dim]
              for h, o in enumerate(head_outputs))
    return out if proj.bias is None else out + proj.bias[...][None]


def _gelu(x: jax.Array) -> jax.Array:
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.float32(math.sqrt(0.5))))


def _finish_block(block, x: jax.Array, attn_out: jax.Array) -> jax.Array:
    """Residual attention branch, then residual MLP, on flattened rows `[N, C]`."""
    x = block.residual_attention(x, attn_out)
    out = block.mlp.fc2(_gelu(block.mlp.fc1(block.norm2(x))))
    return x + (block.ls2(out) if block.ls2 is not None else out)


def _block(block, x: jax.Array, rows: int | None = None) -> jax.Array:
    """One block on `[B, T, C]` -> `[B, R, C]`, for the first R rows only when `rows` is set.

    With `rows` (the last block under class-token pooling) the pooled queries still attend to
    every key and value, but nothing after the last attention mixes tokens, so the other
    rows' projection and MLP never reach the classifier and are not computed.
    """
    b, t, width = x.shape
    r = t if rows is None else rows
    attn_out = _project_heads(block, [a @ v for a, v in _heads(block, x, rows)])
    return _finish_block(block, x[:, :r].reshape(b * r, width), attn_out).reshape(b, r, width)


def _run_blocks(block_graphdef, stacked, x: jax.Array, start, stop) -> jax.Array:
    """Blocks `start..stop-1` on `x` `[B, T, C]`; the bounds may be traced."""
    def body(layer, x):
        return _block(nnx.merge(block_graphdef, jax.tree.map(lambda p: p[layer], stacked)), x)
    return jax.lax.fori_loop(start, stop, body, x)


def _metrics(logits: jax.Array, reference: jax.Array, baseline_logp: jax.Array) -> dict:
    """Per-image metrics of logits `[B, K]` against the reference classes `[B]`."""
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
    )


def _baseline(model: ViT, images: jax.Array, labels: jax.Array):
    """Unpruned pass: each layer's input `[L, B, T, C]`, confidence `[L, H, B]`, logits `[B, K]`
    and reference classes `[B]` (label where `labels >= 0`, else the unpruned top-1)."""
    block_graphdef, stacked = _stack_blocks(model)
    prefix = model.config.num_prefix_tokens

    def step(x, block_state):
        block = nnx.merge(block_graphdef, block_state)
        heads = _heads(block, x)
        b, t, width = x.shape
        attn_out = _project_heads(block, [a @ v for a, v in heads])
        out = _finish_block(block, x.reshape(b * t, width), attn_out).reshape(x.shape)
        confidence = jnp.stack([head_confidence(a, prefix) for a, _ in heads])
        return out, (x, confidence)

    x, (layer_inputs, confidence) = jax.lax.scan(step, model.embed(images), stacked)
    logits = model.classify(x)[0]
    reference = jnp.where(labels >= 0, labels, jnp.argmax(logits, axis=-1).astype(jnp.int32))
    return layer_inputs, confidence, logits, reference


# The sweep ---------------------------------------------------------------------------------

def _prune_layer(block, x, heads, removed, variants, variant_chunk, tail):
    """Prune each (mode, head) variant of one layer and finish the pass with `tail`.

    Args:
      block: the pruned layer's `Block`; x: its input residual stream `[B, R, C]` (R rows,
        T or the pooled ones); heads: its unpruned `_heads` (attention `[B, R, T]`, values
        `[B, T, D]` per head); removed: `[M, R, T]`; variants: (mode index, head index) `[V]`.
      tail: residual stream after the pruned layer `[B, R, C]` -> per-image metrics.
    Returns:
      the metrics of every variant, stacked: `[V, B, ...]`.
    """
    b, r, width = x.shape
    x = x.reshape(b * r, width)
    attn_out = _project_heads(block, [a @ v for a, v in heads])
    # Stacked so that a variant can pick its head with a traced index: [H, B, R, T], [H, B, T, D].
    attention, v = jnp.stack([a for a, _ in heads]), jnp.stack([v for _, v in heads])
    # [H, D, C]: head h reaches the projection output only through these rows of the kernel.
    proj_by_head = block.attn.proj.kernel[...].reshape(block.attn.num_heads,
                                                       block.attn.head_dim, width)

    def prune_one(variant):
        m, h = variant
        removed_heads = (attention[h] * removed[m][None]) @ v[h]
        pruned_out = attn_out - removed_heads.reshape(b * r, -1) @ proj_by_head[h]
        return tail(_finish_block(block, x, pruned_out).reshape(b, r, width))

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
    layer_inputs, confidence, logits, reference = _baseline(model, images, labels)
    baseline_logp = jax.nn.log_softmax(logits, axis=-1)
    block_graphdef, stacked = _stack_blocks(model)
    rows = _pooled_rows(model)
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
                y = _block(model.blocks[depth - 1], y, rows)
            return _metrics(model.classify(y)[0], reference, baseline_logp)

        return None, _prune_layer(block, x, _heads(block, x), removed, variants, variant_chunk,
                                  tail)

    # One traced body for all layers (the tail's trip count is dynamic) keeps compilation
    # time independent of depth.
    _, swept = jax.lax.scan(prune_scanned_layer, None,
                            (jnp.arange(scanned), layer_inputs[:scanned]))
    if rows is not None:
        block, x = model.blocks[depth - 1], layer_inputs[depth - 1]
        last = _prune_layer(block, x[:, :rows], _heads(block, x, rows), removed[:, :rows],
                            variants, variant_chunk,
                            lambda y: _metrics(model.classify(y)[0], reference, baseline_logp))
        swept = {k: jnp.concatenate([swept[k], last[k][None]]) for k in swept}
    # [L, M*H, B, ...] -> [L, M, H, B, ...]
    swept = {k: v.reshape(depth, num_modes, heads, *v.shape[2:]) for k, v in swept.items()}
    base = _metrics(logits, reference, baseline_logp)
    swept.update({f"baseline_{k}": base[k] for k in ("prob", "correct", "loss", "top5_classes",
                                                     "top5_probs")})
    swept.update(baseline_logits=logits, reference=reference, head_confidence=confidence)
    return swept


def _batch_spec(mesh: Mesh, ndim: int, axis: int) -> PartitionSpec:
    """Split axis `axis` of an `ndim`-array over every axis of the mesh."""
    spec = [None] * ndim
    spec[axis] = tuple(mesh.axis_names)
    return PartitionSpec(*spec)


_BATCH_AXIS = {"prob": 3, "correct": 3, "loss": 3, "kl": 3, "top5_classes": 3, "top5_probs": 3,
               "baseline_prob": 0, "baseline_correct": 0, "baseline_loss": 0,
               "baseline_top5_classes": 0, "baseline_top5_probs": 0, "baseline_logits": 0,
               "reference": 0, "head_confidence": 2}
_NDIM = {"prob": 4, "correct": 4, "loss": 4, "kl": 4, "top5_classes": 5, "top5_probs": 5,
         "baseline_prob": 1, "baseline_correct": 1, "baseline_loss": 1,
         "baseline_top5_classes": 2, "baseline_top5_probs": 2, "baseline_logits": 2,
         "reference": 1, "head_confidence": 3}


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
            out_specs={k: _batch_spec(mesh, _NDIM[k], a) for k, a in _BATCH_AXIS.items()})
    return jax.jit(fn)


def _default_chunk(model: ViT, batch_size: int, num_variants: int) -> int:
    """Masked passes (pruning variants) vectorised together: the largest divisor of
    `num_variants` whose widest activation fits `_VARIANT_MEMORY_BUDGET` (a divisor, because
    `lax.map` traces and compiles a second copy of its body for a remainder)."""
    c = model.config
    widest = max(c.mlp_hidden, 3 * c.width, c.num_heads * c.num_tokens)
    fits = max(1, _VARIANT_MEMORY_BUDGET // (4 * batch_size * c.num_tokens * widest))
    return max(d for d in range(1, num_variants + 1) if num_variants % d == 0 and d <= fits)


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
        raise ValueError("ablate_heads needs a model with a classifier (num_classes > 0)")
    modes = tuple(modes)
    unknown = [m for m in modes if m not in PRUNE_MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {PRUNE_MODES}; got {modes}")
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    labels = _check_labels(labels, n, c.num_classes)
    if mesh is not None:
        batch_size = math.ceil(batch_size / mesh.size) * mesh.size
    # "none" changes nothing: it is filled from the unpruned pass, not swept.
    swept_modes = tuple(m for m in modes if m != "none") or ("head",)
    removed = np.stack([prune_region(m, c.num_tokens, c.num_prefix_tokens)
                        for m in swept_modes]).astype(np.float32)
    if variant_chunk is None:
        variant_chunk = _default_chunk(model, batch_size, len(swept_modes) * c.num_heads)
    graphdef, state = nnx.split(model)
    sweep = _compiled_sweep(graphdef, int(variant_chunk), mesh)

    chunks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        chunk_images = _pad(images[start:stop], batch_size)
        chunk_labels = _pad(labels[start:stop], batch_size, fill=-1)
        if mesh is not None:
            sharding = jax.sharding.NamedSharding(mesh, _batch_spec(mesh, 1, 0))
            chunk_labels = jax.device_put(chunk_labels, sharding)
            chunk_images = jax.device_put(chunk_images, jax.sharding.NamedSharding(
                mesh, _batch_spec(mesh, 4, 0)))
        out = sweep(state, chunk_images, chunk_labels, removed)
        chunks.append({k: np.take(_to_host(v), np.arange(stop - start), axis=_BATCH_AXIS[k])
                       for k, v in out.items()})
    out = {k: np.concatenate([ch[k] for ch in chunks], axis=_BATCH_AXIS[k]) for k in chunks[0]}
    return HeadAblation(modes=modes, **_arrange_modes(out, modes, swept_modes),
                        **{k: out[k] for k in _BASELINE}, head_confidence=out["head_confidence"])


def _arrange_modes(out: dict, modes: tuple[str, ...], swept_modes: tuple[str, ...]) -> dict:
    """Per-head arrays `[L, M_swept, H, B]` -> `[M, L, H, B]` in the order of `modes`, with
    "none" copied from the baseline."""
    depth, _, heads = out["prob"].shape[:3]
    arranged = {}
    for key in _PER_HEAD:
        per_mode = []
        for mode in modes:
            if mode == "none":
                if key == "kl":
                    value = np.zeros_like(out["baseline_prob"])
                else:
                    value = out[f"baseline_{key}"]
                per_mode.append(np.broadcast_to(value, (depth, heads, *value.shape)))
            else:
                per_mode.append(out[key][:, swept_modes.index(mode)])
        arranged[key] = np.stack(per_mode)
    return arranged


def _check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    if labels is None:
        return np.full((n,), -1, np.int32)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape [{n}]; got {labels.dtype} "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return labels.astype(np.int32)


def _to_host(value: jax.Array) -> np.ndarray:
    """A result as a numpy array; one sharded over several processes' devices (a mesh that
    spans hosts) is gathered from all of them first."""
    if not value.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(value)


def _pad(array: np.ndarray, size: int, fill: float = 0) -> np.ndarray:
    """Pad the leading axis to `size` so every jitted call sees the same shape."""
    missing = size - array.shape[0]
    if missing == 0:
        return array
    return np.concatenate([array, np.full((missing, *array.shape[1:]), fill, array.dtype)])
