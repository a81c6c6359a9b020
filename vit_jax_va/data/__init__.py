"""Image data sets for the sweep and the demo: IDX files (MNIST, Fashion-MNIST), image folders and
lists of image files, iterated in batches that are already the model's input.

A data set (`ImageDataset`) holds its images either in memory (uint8 `[N, h, w]` or
`[N, h, w, channels]`) or as paths read lazily, one at a time, when a batch is built. Labels
(int64 `[N]`) and class names are optional; every image has an id (a file name, or
`split/index` for IDX data). `description` is a JSON-ready dict for a sweep's manifest.

Files are untrusted. Reading one never stops an iteration: a file that cannot be used (empty,
not an image, truncated, over the pixel limit) is skipped with a `SkippedImageWarning` that
names it and says why, and is recorded in `dataset.skipped`. Files in other modes are converted
to 8-bit greyscale or RGB first (`to_8bit`): CMYK and palette images by PIL, transparent images
composited over a background, 16-bit greyscale scaled (not clipped) to 0..255.

Modules: `images` (one image file: `read_image`, `to_8bit`, `pixel_digest`), `idx` (IDX files,
MNIST and Fashion-MNIST), `folders` (image folders and file lists), `dataset` (`ImageDataset`).
"""

from vit_jax_va.data.dataset import Batch, ImageDataset, SkippedImage, SkippedImageWarning
from vit_jax_va.data.folders import load_image_files, load_image_folder
from vit_jax_va.data.idx import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, MNIST_CLASSES,
                                 is_idx_file, load_fashion_mnist, load_mnist, read_idx)
from vit_jax_va.data.images import (IMAGE_SUFFIXES, MAX_PIXELS, DataError, ImageFileError,
                                    UnsupportedModeError, pixel_digest, read_image, to_8bit)

__all__ = ["Batch", "DataError", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IMAGE_SUFFIXES",
           "ImageDataset", "ImageFileError", "MAX_PIXELS", "MNIST_CLASSES", "SkippedImage",
           "SkippedImageWarning", "UnsupportedModeError", "is_idx_file", "load_fashion_mnist",
           "load_image_files", "load_image_folder", "load_mnist", "pixel_digest", "read_idx",
           "read_image", "to_8bit"]
