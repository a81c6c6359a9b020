"""Image files in folders (one sub-folder per class, or flat) and lists of image files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vit_jax_va.data.dataset import ImageDataset
from vit_jax_va.data.images import IMAGE_SUFFIXES, MAX_PIXELS, DataError, ImageFileError


def load_image_folder(root: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
                      background: int = 0) -> "ImageDataset":
    """Image files under `root`, read lazily.

    Layouts: one sub-folder per class (`root/<class>/**/*.png`: the images anywhere under a
    class folder, in nested folders too, as torchvision's `ImageFolder` reads them; class names
    are the folder names, sorted, and labels index them), or a flat folder of images (no
    labels). Files count as images by their suffix (`IMAGE_SUFFIXES`, any case); hidden files
    and folders are ignored, and links to folders are not followed. In the class layout, image
    files directly under `root` are skipped (recorded with the reason). Ids are paths relative
    to `root`, '/'-separated.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    class_dirs = sorted(d for d in root.iterdir()
                        if d.is_dir() and not d.name.startswith(".") and _image_files(d, nested=True))
    loose = _image_files(root)
    description = {"source": "image-folder", "directory": str(root.absolute()),
                   "layout": "classes" if class_dirs else "flat"}
    if not class_dirs:
        if not loose:
            raise DataError(f"{root}: no image files (suffixes {', '.join(IMAGE_SUFFIXES)}) "
                            f"in the folder or in class sub-folders")
        return ImageDataset(loose, ids=[p.name for p in loose], description=description,
                            max_pixels=max_pixels, background=background)
    paths, labels = [], []
    for label, folder in enumerate(class_dirs):
        files = _image_files(folder, nested=True)
        paths += files
        labels += [label] * len(files)
    dataset = ImageDataset(paths, labels=np.asarray(labels, np.int64),
                           class_names=[d.name for d in class_dirs],
                           ids=[p.relative_to(root).as_posix() for p in paths],
                           description=description, max_pixels=max_pixels, background=background)
    for path in loose:
        dataset.left_out(ImageFileError(path, "not inside a class folder"))
    return dataset


def load_image_files(paths: Sequence[str | os.PathLike], labels: Sequence[int] | None = None, *,
                     class_names: Sequence[str] | None = None, max_pixels: int = MAX_PIXELS,
                     background: int = 0) -> "ImageDataset":
    """A list of image files (read lazily; ids are the paths as given)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise DataError("load_image_files got no paths")
    return ImageDataset(paths, labels=None if labels is None else np.asarray(labels, np.int64),
                        class_names=class_names, ids=[str(p) for p in paths],
                        description={"source": "image-files"}, max_pixels=max_pixels,
                        background=background)


def _image_files(folder: Path, *, nested: bool = False) -> list[Path]:
    """The image files in `folder` (`nested`: and in its sub-folders, at any depth, not through
    links to folders), sorted by path; hidden files and folders left out."""
    if not nested:
        return sorted(p for p in folder.iterdir()
                      if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(top) / f for f in files
                  if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file())
