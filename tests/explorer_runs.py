"""Small real runs for the explorer tests, made once per test session by `vit-va sweep`.

- the demo run: the shipped demo model on the first 24 shipped images (14 x 14 grid);
- a timm run: a random `vit_tiny_patch16_224` at 64 px (4 x 4 grid, 5 classes) in SigLIP's
  layout (no class token, attention pooling) with qk-norm, converted by `converters.from_timm`,
  swept over a flat folder of 6 PNGs (no labels): the explorer without a CLS token.

Runs are cached per pytest base temp directory, so every explorer test module shares them.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--batch-size", "8", "--chunk-size", "24", "--pattern-images", "12",
         "--projection", "pca", "--keep-attention", "2", "--no-progress"]


def small_options():
    """`SMALL` as `SweepOptions` (for the explorer's own demo sweep)."""
    from vit_jax_va.sweep import SweepOptions

    return SweepOptions(batch_size=8, chunk_size=24, pattern_images=12, projection="pca",
                        keep_attention=2)


def _sweep(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "sweep", *args, *SMALL],
                            capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"vit-va sweep {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


@functools.lru_cache(maxsize=None)
def demo_runs_dir(base: Path) -> Path:
    """A runs directory holding the run `demo` (24 demo images)."""
    runs = base / "explorer-runs"
    _sweep("--images", "24", "--out", str(runs / "demo"))
    return runs


@functools.lru_cache(maxsize=None)
def timm_runs_dir(base: Path) -> Path:
    """A runs directory holding the run `timm-tiny` (random timm ViT-Tiny, 64 px, no class
    token, attention pooling, qk-norm; 6 PNGs)."""
    import timm
    from PIL import Image

    import converters
    import vit_jax_va

    root = base / "explorer-timm"
    checkpoint = root / "checkpoint"
    model = converters.from_timm(timm.create_model("vit_tiny_patch16_224", pretrained=False,
                                                   num_classes=5, img_size=64, class_token=False,
                                                   global_pool="map", qk_norm=True))
    vit_jax_va.save(model, checkpoint)
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    _sweep("--model", str(checkpoint), "--data", str(images), "--out", str(root / "runs" / "timm-tiny"))
    return root / "runs"


@functools.lru_cache(maxsize=None)
def backbone_runs_dir(base: Path) -> Path:
    """A runs directory holding the run `dinov2-tiny`: a random timm DINOv2 backbone with
    registers (`vit_small_patch14_reg4_dinov2`, 3 layers, 56 px: a 4 x 4 grid, no classifier;
    layer scale 1, not timm's 1e-5 init, so that pruning a head changes something),
    swept with the patch-token metrics over 6 unlabelled PNGs: the explorer without a
    classifier."""
    import timm
    from PIL import Image

    import converters
    import vit_jax_va

    root = base / "explorer-backbone"
    checkpoint = root / "checkpoint"
    model = converters.from_timm(timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False,
                                                   num_classes=0, img_size=56, depth=3,
                                                   init_values=1.0))  # heads that matter
    vit_jax_va.save(model, checkpoint)
    images = root / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (56, 56, 3), dtype=np.uint8)).save(images / f"photo{i}.png")
    _sweep("--model", str(checkpoint), "--data", str(images), "--out", str(root / "runs" / "dinov2-tiny"),
           "--patch-tokens")
    return root / "runs"
