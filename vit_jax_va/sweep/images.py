"""The images of a run: which of a data set can be read, and their thumbnails."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from vit_jax_va.data import ImageDataset

THUMBNAIL_PIXELS = 64


def describe_positions(positions: Sequence[int], shown: int = 6) -> str:
    """`1, 3, 5, ...` (the first few of a list of image positions, and how many more)."""
    head = ", ".join(str(i) for i in positions[:shown])
    return head if len(positions) <= shown else f"{head} and {len(positions) - shown} more"


def usable_images(dataset: "ImageDataset", max_images: int | None = None,
                  log: Callable[[str], None] = print) -> "ImageDataset":
    """The first `max_images` images of `dataset` that can be read, as a new data set.

    Every file is opened once up front (`ImageDataset.check`), so a sweep knows its image count
    before it starts and never meets a bad file halfway; the skipped files (name and reason)
    travel in the data set's manifest.
    """
    if max_images is not None:
        if max_images <= 0:
            raise ValueError(f"--images must be positive, got {max_images}")
        dataset = dataset.subset(range(min(max_images, len(dataset))))
    skipped = dataset.check(warn=False)  # named once, below
    if not skipped:
        return dataset
    bad = {s.id for s in skipped}
    for s in skipped:
        log(f"skipping {s.path}: {s.reason}")
    usable = [i for i, id_ in enumerate(dataset.ids) if id_ not in bad]
    kept = dataset.subset(usable)
    kept.description = {**kept.description,
                        "skipped_files": [dataclasses.asdict(s) for s in skipped]}
    return kept


def thumbnail(image, config) -> np.ndarray:
    """A small uint8 `[h, w, channels]` picture of an image for tooltips (at most 64 px)."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    picture = picture.convert("L" if config.in_channels == 1 else "RGB")
    scale = min(1.0, THUMBNAIL_PIXELS / max(picture.size))
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    fixed = _fit(np.asarray(picture.resize(size, Image.Resampling.BILINEAR)), config)
    return fixed if fixed.ndim == 3 else fixed[..., None]


def _fit(pixels: np.ndarray, config) -> np.ndarray:
    """Pad/crop a thumbnail to the fixed thumbnail size of `config` (so they stack)."""
    height, width = thumbnail_shape(config)
    out = np.zeros((height, width, *pixels.shape[2:]), np.uint8)
    h, w = min(height, pixels.shape[0]), min(width, pixels.shape[1])
    top, left = (height - h) // 2, (width - w) // 2
    # A picture larger than the canvas keeps its middle, as the model's centre crop does.
    src_top, src_left = (pixels.shape[0] - h) // 2, (pixels.shape[1] - w) // 2
    out[top:top + h, left:left + w] = pixels[src_top:src_top + h, src_left:src_left + w]
    return out


def thumbnail_shape(config) -> tuple[int, int]:
    """(height, width) of every thumbnail in a run: the model input scaled to <= 64 px."""
    scale = min(1.0, THUMBNAIL_PIXELS / max(config.image_size))
    return tuple(max(1, round(s * scale)) for s in config.image_size)  # type: ignore[return-value]
