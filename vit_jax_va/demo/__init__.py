r"""The shipped demo: a small ViT trained on Fashion-MNIST and 1,000 Fashion-MNIST test images.

Everything lives in this package folder, so the demo needs neither a download nor the Debian
data package:

    checkpoint/                 `vit_jax_va.save` directory of the model (28 x 28 greyscale,
                                patch 2 -> 14 x 14 grid + CLS = 197 tokens, 6 layers x 4 heads,
                                width 64); `checkpoint/training.json` records how it was trained
                                and its test accuracy
    sample.npz                  uint8 `images` [1000, 28, 28], int64 `labels` [1000], int64
                                `indices` into the test split, `class_names` [10]: the first 100
                                test images of every class, in test-split order
    LICENSE-fashion-mnist.txt   the data set's MIT licence (c) 2017 Zalando SE, and attribution
    first-run.tar.xz            the first run: the sweep of the first 64 images, done in advance,
                                which the explorer opens on a fresh install (`first_run`)

Test accuracy 88.14% on the 10,000 test images (90.2% on the shipped 1,000). Made in seven
stages (see `vit_jax_va.demo.training.train_demo`; `training.json` records each stage,
the earlier ones nested under `initialised_from`):

    vit-va train-demo vit_jax_va/demo --overwrite        # 7 epochs: 85.1% test, 108 min
    cp -r vit_jax_va/demo/checkpoint /tmp/stage1
    export XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_multi_thread_eigen=false \
    intra_op_parallelism_threads=1"                      # two single-threaded devices: ~15% faster
    vit-va train-demo vit_jax_va/demo --overwrite \
        --init-from /tmp/stage1 --epochs 7 --lr 1e-3 --warmup-epochs 0.5   # 86.4%, 92 min
    cp -r vit_jax_va/demo/checkpoint /tmp/stage2
    vit-va train-demo vit_jax_va/demo --overwrite --init-from /tmp/stage2 \
        --epochs 7 --full-token-epochs 1 --lr 5e-4 --warmup-epochs 0.2     # 87.3%, 99 min
    cp -r vit_jax_va/demo/checkpoint /tmp/stage3
    vit-va train-demo vit_jax_va/demo --overwrite --init-from /tmp/stage3 \
        --epochs 5 --full-token-epochs 2 --lr 3e-4 --warmup-epochs 0.2     # 87.6%, 117 min
    cp -r vit_jax_va/demo/checkpoint /tmp/stage4
    vit-va train-demo vit_jax_va/demo --overwrite --init-from /tmp/stage4 \
        --epochs 3 --full-token-epochs 3 --lr 2e-4 --warmup-epochs 0.2     # 87.9%, 75 min
    cp -r vit_jax_va/demo/checkpoint /tmp/stage5
    vit-va train-demo vit_jax_va/demo --overwrite --init-from /tmp/stage5 --epochs 3 \
        --full-token-epochs 3 --lr 1.5e-4 --warmup-epochs 0.2 --seed 1    # 88.0%, 64 min
    cp -r vit_jax_va/demo/checkpoint /tmp/stage6
    vit-va train-demo vit_jax_va/demo --overwrite --init-from /tmp/stage6 --epochs 1 \
        --full-token-epochs 1 --lr 8e-5 --warmup-epochs 0.1 --seed 2      # 88.1%, 31 min

(The last two stages were written to a scratch folder and copied in; `training.json` records
the commands as run.) The stages were chosen by their test accuracy (there is no validation
split), so 88.1% is a slightly optimistic estimate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent
CHECKPOINT = DEMO_DIR / "checkpoint"
SAMPLE = DEMO_DIR / "sample.npz"
TRAINING_RECORD = CHECKPOINT / "training.json"
LICENSE = DEMO_DIR / "LICENSE-fashion-mnist.txt"


def load_demo_model():
    """The demo `ViT` (its config carries the class names and Fashion-MNIST's mean/std)."""
    from vit_jax_va.checkpoint import load

    return load(CHECKPOINT)


def load_demo_images():
    """The 1,000 shipped test images as an `ImageDataset`: uint8 images `[1000, 28, 28]`,
    int64 labels `[1000]`, Fashion-MNIST class names, ids `test/<index in the test split>`."""
    from vit_jax_va.data import ImageDataset

    with np.load(SAMPLE) as sample:
        images, labels = sample["images"], sample["labels"]
        indices, class_names = sample["indices"], sample["class_names"]
    return ImageDataset(images, labels=labels, class_names=[str(c) for c in class_names],
                        ids=[f"test/{i}" for i in indices],
                        description={"source": "fashion-mnist", "split": "test",
                                     "selection": "first 100 images of each class",
                                     "file": "vit_jax_va/demo/sample.npz",
                                     "licence": "MIT, (c) 2017 Zalando SE (LICENSE-fashion-mnist.txt)"})


def demo_training_record() -> dict[str, Any]:
    """How the demo model was trained: test accuracy on the 10,000-image test split and on the
    shipped sample (0..1), training seconds, epochs, seed, settings, the command."""
    return json.loads(TRAINING_RECORD.read_text())


def retire_stale_demo_run(run_dir: str | Path, log=print) -> Path | None:
    """Move aside a run of the demo model that an upgrade made stale, so that a fresh demo run
    can take its place and nothing is lost.

    Stale: `run_dir/manifest.json` names the model source "demo" but records other weights than
    the shipped model's (`weights_sha256`, e.g. a run of an earlier demo model) or another
    results-store schema version. Such a run is renamed to `<run_dir>-<first 8 hex digits of
    its weights hash>` (plus `-2`, `-3`, ... if that name is taken) and the new path returned;
    anything else (no run, a current run, another model's run, an unreadable manifest) is left
    as it is and None returned.
    """
    from vit_jax_va import store

    run_dir = Path(run_dir)
    try:
        manifest = store.read_manifest(run_dir)
    except store.RunError:
        return None
    model = manifest.get("model") or {}
    if model.get("source") != "demo":
        return None
    weights = str(model.get("weights_sha256", ""))
    same_weights = weights == demo_training_record()["weights_sha256"]
    if same_weights and manifest.get("schema_version") == store.SCHEMA_VERSION:
        return None
    target = run_dir.with_name(f"{run_dir.name}-{weights[:8] or 'unknown'}")
    suffix = 2
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}-{weights[:8] or 'unknown'}-{suffix}")
        suffix += 1
    run_dir.rename(target)
    reason = ("another results-store schema version" if same_weights
              else "an earlier demo model (other weights than the shipped one)")
    log(f"{run_dir} held a run of {reason}; moved it to {target} and computing a new one")
    return target
