"""Eval-time preprocessing that reproduces timm's `transforms_imagenet_eval` for a `ViTConfig`.

Resize (shorter side to size / crop_fraction, or both sides in 'squash' mode), centre crop,
scale to 0..1, normalise with the config's mean/std. Resizing is done by PIL with the same
filter torchvision passes to PIL, so results equal timm's transform on PIL images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vit_jax_va.config import ViTConfig

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

ImageLike = Image.Image | np.ndarray | str | os.PathLike


def preprocess(config: ViTConfig, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
    """Turn images into the model's input: float32 `[B, height, width, channels]`, normalised.

    Args:
      config: the model's config (image size, channels, mean/std, interpolation, crop).
      images: one image or a sequence of them; each a PIL image, a uint8 array `[h, w]` or
        `[h, w, c]` (c in 1, 3, 4), or a path to an image file. A uint8 array `[B, h, w(, c)]`
        is taken as a batch. Files and PIL images are decoded as the sweep decodes them
        (`vit_jax_va.data.read_image`: 16-bit greyscale scaled to 8 bits, transparency
        composited over black).
    Colour images become greyscale for a 1-channel model and greyscale becomes RGB for a
    3-channel model (PIL's conversions, as `Image.convert`).
    """
    batch = _as_list(images)
    if not batch:
        raise ValueError("preprocess got no images")
    return np.stack([_one(config, _to_pil(img)) for img in batch])


def _as_list(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    if isinstance(images, np.ndarray):
        if images.ndim == 4 or (images.ndim == 3 and images.shape[-1] not in (1, 3, 4)):
            return list(images)
        return [images]
    if isinstance(images, (Image.Image, str, os.PathLike)):
        return [images]
    if isinstance(images, Iterable):
        return list(images)
    raise TypeError(f"cannot read images from a {type(images).__name__}")


def _to_pil(image: ImageLike) -> Image.Image:
    """An 8-bit 'L' or 'RGB' PIL image, decoded as the sweep decodes it: a file through
    `data.read_image` (its size guard, 16-bit scaling and alpha compositing), a PIL image
    through `data.to_8bit`, so that every entry point feeds the model the same pixels."""
    # Imported here: vit_jax_va.data builds its batches with preprocess.
    from vit_jax_va.data import read_image, to_8bit

    if isinstance(image, Image.Image):
        return to_8bit(image)
    if isinstance(image, (str, os.PathLike)):
        return read_image(Path(image))  # ImageFileError (a ValueError) names the file and why
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise TypeError(f"image arrays must be uint8 (0..255); got {array.dtype} {array.shape}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"an image array must be [h, w] or [h, w, c]; got {array.shape}")
    return to_8bit(Image.fromarray(array))


def _resized_size(config: ViTConfig, height: int, width: int) -> tuple[int, int]:
    """(height, width) after timm's eval resize, before the centre crop."""
    target = tuple(math.floor(s / config.crop_fraction) for s in config.image_size)
    if config.crop_mode == "squash":
        return target  # type: ignore[return-value]
    if target[0] == target[1]:
        # torchvision Resize(int): shorter side to size, longer side truncated.
        short, long = min(height, width), max(height, width)
        new_short, new_long = target[0], int(target[0] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    # timm's ResizeKeepRatio(longest=0) for non-square targets.
    ratio = min(height / target[0], width / target[1])
    return (round(height / ratio), round(width / ratio))


def _one(config: ViTConfig, image: Image.Image) -> np.ndarray:
    image = image.convert("L" if config.in_channels == 1 else "RGB")
    if config.in_channels not in (1, 3):
        raise ValueError(f"preprocess handles 1- or 3-channel models; config has {config.in_channels}")
    new_h, new_w = _resized_size(config, image.height, image.width)
    image = image.resize((new_w, new_h), _FILTERS[config.interpolation])
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    pixels = _center_crop(pixels, *config.image_size)
    mean = np.asarray(config.mean, np.float32)
    std = np.asarray(config.std, np.float32)
    return (pixels.astype(np.float32) / np.float32(255) - mean) / std


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision's CenterCrop on `[h, w, c]`: zero-pad if too small, then crop the middle."""
    h, w = pixels.shape[:2]
    if h < height or w < width:
        pad_h, pad_w = max(height - h, 0), max(width - w, 0)
        pixels = np.pad(pixels, ((pad_h // 2, pad_h - pad_h // 2),
                                 (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
        h, w = pixels.shape[:2]
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return pixels[top:top + height, left:left + width]
