"""Training the shipped demo model: the demo's architecture and `train_demo`, which trains it on
Fashion-MNIST (`vit_jax_va.train`) and writes the files `vit_jax_va.demo` ships
(`vit-va train-demo`)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vit_jax_va.config import ViTConfig
from vit_jax_va.train import TrainSettings, channel_stats, evaluate, train_vit


DEMO_ARCHITECTURE = dict(image_size=28, patch_size=2, in_channels=1, width=64, depth=6,
                         num_heads=4, mlp_ratio=4.0, class_token=True, pool="token",
                         num_classes=10, interpolation="bilinear", crop_fraction=1.0)


def demo_config(mean: tuple[float, ...], std: tuple[float, ...], **changes: Any) -> ViTConfig:
    """The demo's architecture (28 x 28 greyscale, patch 2 -> 14 x 14 grid + CLS = 197 tokens,
    6 layers x 4 heads, width 64) with Fashion-MNIST's class names and the given statistics.
    `interpolation='bilinear'` and `crop_fraction=1.0` make `preprocess` leave 28 x 28 inputs
    unresized, so it only normalises."""
    from vit_jax_va.data import FASHION_MNIST_CLASSES

    return ViTConfig(**{**DEMO_ARCHITECTURE, "mean": mean, "std": std,
                        "class_names": FASHION_MNIST_CLASSES, **changes})


def sample_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` images of every class, in data-set order: int64 `[K * per_class]`."""
    chosen = [np.flatnonzero(labels == k)[:per_class] for k in np.unique(labels)]
    short = [int(k) for k, c in zip(np.unique(labels), chosen) if len(c) < per_class]
    if short:
        raise ValueError(f"classes {short} have fewer than {per_class} images")
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def train_demo(out: str | os.PathLike, *, data_dir: str | os.PathLike | None = None,
               settings: TrainSettings = TrainSettings(), sample_per_class_count: int = 100,
               architecture: dict[str, Any] | None = None, overwrite: bool = False,
               init_from: str | os.PathLike | None = None, command: str | None = None,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the demo ViT on Fashion-MNIST and write the files `vit_jax_va.demo` ships.

    `init_from` continues from a saved checkpoint (e.g. a further full-token stage with a fresh
    schedule); its training record is kept under `initialised_from` in the new one.

    Writes, under the directory `out`:
      `checkpoint/` (`vit_jax_va.save`), `checkpoint/training.json` (accuracies, time, recipe,
      command), `sample.npz` (uint8 `images` `[K * per_class, 28, 28]`, int64 `labels`,
      int64 `indices` into the test split, `class_names`).
    Returns the contents of `training.json`.
    """
    from vit_jax_va.checkpoint import load, save, weights_hash
    from vit_jax_va.data import FASHION_MNIST_DIR, load_fashion_mnist

    out = Path(out)
    data_dir = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    train_set = load_fashion_mnist(data_dir, "train")
    test_set = load_fashion_mnist(data_dir, "test")
    mean, std = channel_stats(train_set.images)
    config = demo_config(mean, std, **(architecture or {}))
    init, previous = None, None
    if init_from is not None:
        init = load(init_from)
        record_path = Path(init_from) / "training.json"
        previous = json.loads(record_path.read_text()) if record_path.is_file() else None
    log(f"training a {config.depth}-layer x {config.num_heads}-head ViT (width {config.width}, "
        f"{config.num_tokens} tokens) on {len(train_set)} Fashion-MNIST images; "
        f"mean {mean[0]:.4f}, std {std[0]:.4f}; {settings}")
    start = time.perf_counter()
    model, history = train_vit(config, settings, train_set.images, train_set.labels,
                               test_images=test_set.images, test_labels=test_set.labels,
                               init=init, log=log)
    seconds = time.perf_counter() - start

    sample = sample_per_class(test_set.labels, sample_per_class_count)
    test_accuracy = evaluate(model, test_set.images, test_set.labels)
    sample_accuracy = evaluate(model, test_set.images[sample], test_set.labels[sample])
    checkpoint = save(model, out / "checkpoint", overwrite=overwrite)
    record = {
        "dataset": "fashion-mnist", "dataset_files": {"train": train_set.description["files"],
                                                      "test": test_set.description["files"]},
        "test_accuracy": test_accuracy, "test_images": len(test_set),
        "sample_accuracy": sample_accuracy, "sample_images": int(len(sample)),
        "training_seconds": round(seconds, 1), "epochs": settings.epochs, "seed": settings.seed,
        "settings": settings.to_dict(),
        "history": [dataclasses.asdict(h) for h in history],
        "weights_sha256": weights_hash(model),
        "command": command if command is not None else " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "jax": jax.__version__, "backend": jax.default_backend(),
                    "devices": jax.local_device_count(),
                    "xla_flags": os.environ.get("XLA_FLAGS", "")},
    }
    if init_from is not None:
        record["initialised_from"] = previous if previous is not None else str(init_from)
    (checkpoint / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    np.savez_compressed(out / "sample.npz", images=test_set.images[sample],
                        labels=test_set.labels[sample], indices=sample,
                        class_names=np.asarray(config.class_names))
    log(f"test accuracy {test_accuracy:.4f} on {len(test_set)} images, {sample_accuracy:.4f} on the "
        f"{len(sample)}-image sample; {seconds / 60:.1f} min; saved to {out}")
    return record

