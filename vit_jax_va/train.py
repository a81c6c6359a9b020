"""Train a small ViT from scratch on uint8 images (the shipped Fashion-MNIST demo model).

The model is this project's own `ViT`; the optimiser is Optax AdamW with linear warmup and
cosine decay, global-norm clipping and weight decay on matrices only. Augmentation (random
horizontal flip, optionally a random crop after zero padding), PatchDropout (a random half of
the patch tokens per image, which makes a step about 2.5x cheaper on 197 tokens) and
normalisation run inside the jitted step on uint8 batches, so the host only gathers indices.
With several local devices the batch is split over them (data parallel). On a 2-core CPU,
`XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1"` (two single-threaded devices) made a step about 15% faster
than XLA's default threading, which here was no faster than one thread. Everything random is
derived from one seed: initialisation, the shuffling order, augmentation. Two runs with the
same seed, data and device count give identical weights on the same machine.

Shapes: N images, b batch, h x w pixels, K classes.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vit_jax_va import batching
from vit_jax_va.config import ViTConfig
from vit_jax_va.devices import local_data_mesh
from vit_jax_va.model import ViT


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How to train.

    Attributes:
      epochs: passes over the training images.
      batch_size: images per step (the last partial batch of an epoch is dropped).
      learning_rate: peak AdamW learning rate, reached after `warmup_epochs`.
      end_learning_rate: learning rate at the end of the cosine decay.
      warmup_epochs: linear warmup length (may be fractional).
      weight_decay: decoupled weight decay, on kernels and embeddings (arrays with >= 2 dims).
      clip_norm: global gradient-norm clip.
      label_smoothing: mass spread uniformly over the K classes.
      flip: random horizontal flips (Fashion-MNIST items are left-right symmetric enough).
      crop_padding: pad by this many (zero, i.e. background) pixels, then crop back at random.
      patch_keep: fraction of patch tokens each training image keeps (PatchDropout, Liu et al.
        2022: a random subset per image, the class token always kept). Attention costs the
        square of the token count, so 0.5 makes a step about 2.5x cheaper on a 197-token model;
        evaluation always uses every token.
      full_token_epochs: the last epochs train with every token (patch_keep ignored), so the
        model also adapts to the full token count it is evaluated with.
      seed: seeds initialisation, shuffling and augmentation.
      eval_batch_size: images per evaluation step.
    """

    epochs: int = 7
    batch_size: int = 128
    learning_rate: float = 1.5e-3
    end_learning_rate: float = 1e-5
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    clip_norm: float = 1.0
    label_smoothing: float = 0.1
    flip: bool = True
    crop_padding: int = 0
    patch_keep: float = 0.5
    full_token_epochs: int = 1
    seed: int = 0
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if not 0 < self.patch_keep <= 1:
            raise ValueError(f"patch_keep={self.patch_keep} must be in (0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EpochLog:
    """One epoch: mean training loss, accuracies (0..1; test is None without test data), seconds."""

    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float | None
    seconds: float


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images `[N, h, w]` or `[N, h, w, c]`,
    in the 0..1 pixel scale that `ViTConfig.mean`/`std` use."""
    pixels = images.reshape(-1, 1 if images.ndim == 3 else images.shape[-1])
    pixels = pixels.astype(np.float64) / 255.0
    return tuple(pixels.mean(axis=0).tolist()), tuple(pixels.std(axis=0).tolist())


def normalise(config: ViTConfig, images: jax.Array) -> jax.Array:
    """uint8 `[b, h, w]` or `[b, h, w, c]` at the model's size -> float32 `[b, h, w, c]`,
    normalised as `vit_jax_va.preprocess` does (no resize: the images must already fit)."""
    if images.ndim == 3:
        images = images[..., None]
    mean = jnp.asarray(config.mean, jnp.float32).reshape(1, 1, 1, -1)
    std = jnp.asarray(config.std, jnp.float32).reshape(1, 1, 1, -1)
    return (images.astype(jnp.float32) / jnp.float32(255) - mean) / std


def augment(key: jax.Array, images: jax.Array, *, flip: bool, crop_padding: int) -> jax.Array:
    """Random horizontal flip and random crop (after zero padding) of uint8 `[b, h, w, c]`."""
    b, h, w, _ = images.shape
    flip_key, crop_key = jax.random.split(key)
    if flip:
        flipped = jax.random.bernoulli(flip_key, 0.5, (b, 1, 1, 1))
        images = jnp.where(flipped, images[:, :, ::-1], images)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * p + 1)
        images = jax.vmap(lambda image, o: jax.lax.dynamic_slice(
            image, (o[0], o[1], 0), (h, w, image.shape[-1])))(padded, offsets)
    return images


def forward_kept_patches(model: ViT, images: jax.Array, key: jax.Array, keep: int) -> jax.Array:
    """Logits `[b, K]` of normalised images `[b, h, w, c]` when each image keeps only `keep`
    randomly chosen patch tokens (all prefix tokens stay; positions are embedded first)."""
    tokens = model.embed(images)
    prefix = model.config.num_prefix_tokens
    scores = jax.random.uniform(key, (tokens.shape[0], tokens.shape[1] - prefix))
    kept = jnp.argsort(scores, axis=1)[:, :keep]
    patches = jnp.take_along_axis(tokens[:, prefix:], kept[:, :, None], axis=1)
    x = jnp.concatenate([tokens[:, :prefix], patches], axis=1)
    for block in model.blocks:
        x, _ = block(x)
    return model.classify(x)[0]


def make_optimizer(settings: TrainSettings, steps_per_epoch: int) -> optax.GradientTransformation:
    """Clip, then AdamW with linear warmup and cosine decay to `end_learning_rate`."""
    total = settings.epochs * steps_per_epoch
    warmup = min(int(round(settings.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=settings.learning_rate, warmup_steps=warmup,
        decay_steps=max(total, 1), end_value=settings.end_learning_rate)
    # Decay matrices and embeddings; biases and LayerNorm scales stay free (the usual ViT recipe).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(settings.clip_norm),
                       optax.adamw(schedule, weight_decay=settings.weight_decay, mask=decay_mask))


def _keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(initialisation, shuffling, augmentation) keys of a seed."""
    init_key, shuffle_key, augment_key = jax.random.split(jax.random.key(seed), 3)
    return init_key, shuffle_key, augment_key


def init_model(config: ViTConfig, seed: int) -> ViT:
    """The untrained model that `train_vit` starts from with this seed."""
    return ViT(config, rngs=nnx.Rngs(params=_keys(seed)[0]))


def train_vit(config: ViTConfig, settings: TrainSettings, images: np.ndarray,
              labels: np.ndarray, *, test_images: np.ndarray | None = None,
              test_labels: np.ndarray | None = None, init: ViT | None = None,
              log: Callable[[str], None] | None = print) -> tuple[ViT, list[EpochLog]]:
    """Train a fresh `ViT(config)` (or continue from `init`) on uint8 images.

    Args:
      config: the architecture and normalisation; `image_size` must equal the images' size.
      settings: the recipe (`TrainSettings`).
      images, labels: uint8 `[N, h, w]` (or `[N, h, w, c]`) and int `[N]` in 0..K-1.
      test_images, test_labels: optional held-out set, evaluated after every epoch.
      init: start from this model's weights (its config must equal `config`) with a fresh
        optimiser and schedule; it is not modified.
      log: called with one line per epoch (None: silent).
    Returns the trained model and one `EpochLog` per epoch.
    """
    images = _check_images(config, images, "images")
    labels = np.asarray(labels, np.int32)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be [N] = [{len(images)}]; got {list(labels.shape)}")
    steps_per_epoch = len(images) // settings.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images)} images are fewer than one batch of {settings.batch_size}")

    _, shuffle_key, augment_key = _keys(settings.seed)
    model = init_model(config, settings.seed)
    if init is not None:
        if init.config != config:
            raise ValueError("init's config differs from config: "
                             + ", ".join(f"{k}: {v!r} != {config.to_dict()[k]!r}"
                                         for k, v in init.config.to_dict().items()
                                         if config.to_dict()[k] != v))
        nnx.update(model, jax.tree.map(jnp.copy, nnx.state(init)))
    graphdef, params = nnx.split(model)
    tx = make_optimizer(settings, steps_per_epoch)
    opt_state = tx.init(params)

    def loss_fn(params, batch, batch_labels, key, keep):
        model = nnx.merge(graphdef, params)
        if keep < config.num_patches:
            logits = forward_kept_patches(model, normalise(config, batch), key, keep)
        else:
            logits = model(normalise(config, batch))
        targets = optax.smooth_labels(jax.nn.one_hot(batch_labels, config.num_classes),
                                      settings.label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, jnp.sum(jnp.argmax(logits, axis=-1) == batch_labels)

    @functools.partial(jax.jit, static_argnames="keep")
    def step(params, opt_state, batch, batch_labels, key, keep):
        if batch.ndim == 3:
            batch = batch[..., None]
        augment_key, drop_key = jax.random.split(key)
        batch = augment(augment_key, batch, flip=settings.flip, crop_padding=settings.crop_padding)
        (loss, correct), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, batch, batch_labels, drop_key, keep)
        # Adam's bias correction mixes an int32 step count with float32 moments, which strict
        # promotion refuses; our own arithmetic above stays strict.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, correct

    # Data parallel over this process's devices: the batch is split, the weights replicated.
    mesh = local_data_mesh()
    if mesh is not None and settings.batch_size % mesh.size == 0:
        split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        params, opt_state = jax.device_put((params, opt_state), replicated)
        place = lambda batch: jax.device_put(batch, split)  # noqa: E731
    else:
        place = jnp.asarray

    history: list[EpochLog] = []
    for epoch in range(settings.epochs):
        start = time.perf_counter()
        full = epoch >= settings.epochs - settings.full_token_epochs
        keep = config.num_patches if full else max(1, round(settings.patch_keep * config.num_patches))
        order = np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), len(images)))
        total_loss = jnp.float32(0)
        total_correct = jnp.int32(0)
        for i in range(steps_per_epoch):
            idx = order[i * settings.batch_size:(i + 1) * settings.batch_size]
            key = jax.random.fold_in(augment_key, epoch * steps_per_epoch + i)
            params, opt_state, loss, correct = step(params, opt_state, place(images[idx]),
                                                     place(labels[idx]), key, keep=keep)
            total_loss = total_loss + loss
            total_correct = total_correct + correct.astype(jnp.int32)
        seen = steps_per_epoch * settings.batch_size
        nnx.update(model, params)
        test_accuracy = (None if test_images is None else
                         evaluate(model, test_images, test_labels, settings.eval_batch_size))
        entry = EpochLog(epoch=epoch + 1, loss=float(total_loss) / steps_per_epoch,
                         train_accuracy=int(total_correct) / seen, test_accuracy=test_accuracy,
                         seconds=time.perf_counter() - start)
        history.append(entry)
        if log is not None:
            test = "" if test_accuracy is None else f"  test acc {test_accuracy:.4f}"
            log(f"epoch {entry.epoch:3d}/{settings.epochs}  loss {entry.loss:.4f}  "
                f"train acc {entry.train_accuracy:.4f}{test}  {entry.seconds:.0f} s")
    nnx.update(model, params)
    return model, history


def predict(model: ViT, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Class predictions int64 `[N]` for uint8 images `[N, h, w(, c)]` at the model's size."""
    images = _check_images(model.config, images, "images")
    graphdef, params = nnx.split(model)
    return batching.map_chunks(functools.partial(_classes, graphdef, params), [images],
                               max(1, min(batch_size, len(images)))).astype(np.int64)


@functools.partial(jax.jit, static_argnums=0)
def _classes(graphdef: nnx.GraphDef, params: nnx.State, batch: jax.Array) -> jax.Array:
    # Module-level so that evaluating after every epoch compiles once (the graphdef is hashable).
    if batch.ndim == 3:
        batch = batch[..., None]
    model = nnx.merge(graphdef, params)
    return jnp.argmax(model(normalise(model.config, batch)), axis=-1)


def evaluate(model: ViT, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy (0..1) on uint8 images `[N, h, w(, c)]` with labels `[N]`."""
    labels = np.asarray(labels)
    if labels.shape != (len(images),):
        raise ValueError(f"labels must be [N] = [{len(images)}]; got {list(labels.shape)}")
    return float(np.mean(predict(model, images, batch_size) == labels))


def _check_images(config: ViTConfig, images: np.ndarray, name: str) -> np.ndarray:
    images = np.asarray(images)
    size = tuple(images.shape[1:3])
    channels = 1 if images.ndim == 3 else images.shape[-1]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError(f"{name} must be uint8 [N, h, w(, c)]; got {images.dtype} {list(images.shape)}")
    if size != config.image_size or channels != config.in_channels:
        raise ValueError(f"{name} are {size[0]}x{size[1]}x{channels}; the model takes "
                         f"{config.image_size[0]}x{config.image_size[1]}x{config.in_channels}")
    return images
