"""`ImageDataset`: images in memory or as files, labels, class names, ids, a description;
iterated in batches that are already the model's input, skipping (and naming) unusable files."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from vit_jax_va.config import ViTConfig
from vit_jax_va.data.images import MAX_PIXELS, DataError, ImageFileError, pixel_digest, read_image
from vit_jax_va.preprocess import preprocess


class SkippedImageWarning(UserWarning):
    """An image file was left out of an iteration; the message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """One image left out: its id, its path and why."""

    id: str
    path: str
    reason: str


class Batch(NamedTuple):
    """One batch from `ImageDataset.batches`.

    images: float32 `[b, height, width, channels]`, the output of `vit_jax_va.preprocess`.
    labels: int64 `[b]`, or None for unlabelled data.
    ids: the `b` image ids.
    indices: int64 `[b]` positions in the data set (skipped images leave gaps).
    """

    images: np.ndarray
    labels: np.ndarray | None
    ids: tuple[str, ...]
    indices: np.ndarray


class ImageDataset:
    """Images (in memory or as files), optional labels and class names, ids, a description.

    Args:
      images: uint8 `[N, h, w]` / `[N, h, w, channels]`, or a sequence of N file paths.
      labels: int `[N]` class indices, or None.
      class_names: names of the classes in label order, or None.
      ids: N unique strings; default `str(index)`.
      description: JSON-ready facts about the source (merged into `manifest()`).
      max_pixels, background: passed to `read_image` for file-backed data.
    """

    def __init__(self, images: np.ndarray | Sequence[str | os.PathLike], *,
                 labels: np.ndarray | Sequence[int] | None = None,
                 class_names: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                 description: dict[str, Any] | None = None, max_pixels: int = MAX_PIXELS,
                 background: int = 0):
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim not in (3, 4):
                raise DataError(f"in-memory images must be uint8 [N, h, w(, channels)]; got "
                                f"{images.dtype} {list(images.shape)}")
            self.images: np.ndarray | list[Path] = images
        else:
            self.images = [Path(p) for p in images]
        n = len(self.images)
        self.labels = None if labels is None else np.asarray(labels, np.int64)
        if self.labels is not None and self.labels.shape != (n,):
            raise DataError(f"{len(self.labels)} labels for {n} images")
        self.class_names = None if class_names is None else tuple(str(c) for c in class_names)
        if self.labels is not None and self.class_names is not None and n and (
                self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise DataError(f"labels span {self.labels.min()}..{self.labels.max()} for "
                            f"{len(self.class_names)} class names")
        self.ids = tuple(str(i) for i in range(n)) if ids is None else tuple(str(i) for i in ids)
        if len(self.ids) != n:
            raise DataError(f"{len(self.ids)} ids for {n} images")
        if len(set(self.ids)) != n:
            raise DataError("image ids are not unique")
        self.description = dict(description or {})
        self.max_pixels = int(max_pixels)
        self.background = int(background)
        self._skipped: list[SkippedImage] = []
        self._skipped_at: set[int] = set()
        self._digests: dict[int, str] = {}  # pixel_digest of the images `check` read

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        where = "in memory" if self.in_memory else "files"
        return (f"ImageDataset({len(self)} images ({where}), "
                f"{'labelled' if self.labels is not None else 'unlabelled'}, "
                f"{len(self.class_names or ())} classes, {len(self._skipped)} skipped)")

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)

    @property
    def skipped(self) -> list[SkippedImage]:
        """Images left out so far (by `batches`, `image` or `check`), in the order found."""
        return list(self._skipped)

    def image(self, index: int) -> Image.Image | np.ndarray:
        """Image `index` as the sweep reads it: a uint8 array or an 8-bit 'L'/'RGB' PIL image.

        Raises `ImageFileError` naming the file and the reason (and records the skip) for an
        unusable file.
        """
        try:
            return self._read(index)
        except ImageFileError as err:
            self._record(index, err, warn=False)
            raise

    def batches(self, config: ViTConfig, batch_size: int = 64,
                indices: Sequence[int] | None = None) -> Iterator[Batch]:
        """Yield `Batch`es of `batch_size` usable images (the last may be smaller), in order.

        Each image goes through `vit_jax_va.preprocess(config, ...)` (mode conversion, resize,
        crop, normalisation). Unusable files are skipped with a `SkippedImageWarning` and
        recorded in `skipped`; the iteration always completes.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive; got {batch_size}")
        order = range(len(self)) if indices is None else [int(i) for i in indices]
        pending: list[tuple[int, np.ndarray]] = []
        for index in order:
            if index in self._skipped_at:
                continue
            try:
                pixels = preprocess(config, self._read(index))[0]
            except ImageFileError as err:
                self._record(index, err, warn=True)
                continue
            pending.append((index, pixels))
            if len(pending) == batch_size:
                yield self._batch(pending)
                pending = []
        if pending:
            yield self._batch(pending)

    def check(self, *, warn: bool = True) -> list[SkippedImage]:
        """Open every file once (no preprocessing); record and return the unusable ones (with a
        `SkippedImageWarning` each if `warn`). The usable images' `fingerprints` are taken from
        this read."""
        if not self.in_memory:
            for index in range(len(self)):
                if index not in self._skipped_at:
                    try:
                        self._digests[index] = pixel_digest(self._read(index))
                    except ImageFileError as err:
                        self._record(index, err, warn=warn)
        return self.skipped

    def fingerprints(self) -> list[str]:
        """`pixel_digest` of every image, `[N]`: from `check` where it read the file, else read
        now. Raises `ImageFileError` for an image that cannot be read."""
        for index in range(len(self)):
            if index not in self._digests:
                self._digests[index] = pixel_digest(self._read(index))
        return [self._digests[i] for i in range(len(self))]

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        """A new data set of the images at `indices` (same classes and description)."""
        indices = [int(i) for i in indices]
        images = self.images[indices] if self.in_memory else [self.images[i] for i in indices]
        subset = ImageDataset(images, labels=None if self.labels is None else self.labels[indices],
                              class_names=self.class_names, ids=[self.ids[i] for i in indices],
                              description={**self.description, "subset_of": len(self)},
                              max_pixels=self.max_pixels, background=self.background)
        subset._digests = {new: self._digests[old] for new, old in enumerate(indices) if old in self._digests}
        return subset

    def manifest(self) -> dict[str, Any]:
        """JSON-ready summary for a results store: description, counts, classes, skipped files."""
        return {**self.description, "num_images": len(self),
                "labelled": self.labels is not None,
                "class_names": None if self.class_names is None else list(self.class_names),
                "max_pixels": self.max_pixels, "background": self.background,
                "skipped": [dataclasses.asdict(s) for s in self.skipped]}

    # Internals ---------------------------------------------------------------------------------

    def _read(self, index: int) -> Image.Image | np.ndarray:
        if self.in_memory:
            return self.images[index]
        return read_image(self.images[index], max_pixels=self.max_pixels,
                          background=self.background)

    def left_out(self, err: ImageFileError) -> None:
        """Record a file that a loader found but did not take into the data set (e.g. an image
        outside every class folder): it is listed in `skipped` with `err`'s reason."""
        self._record(None, err, warn=False)

    def _record(self, index: int | None, err: ImageFileError, *, warn: bool) -> None:
        """Record image `index` (None: a file outside the data set) as skipped."""
        if index is not None:
            if index in self._skipped_at:
                return
            self._skipped_at.add(index)
        id_ = self.ids[index] if index is not None else Path(err.path).name
        self._skipped.append(SkippedImage(id_, err.path, err.reason))
        if warn:
            warnings.warn(f"skipping {err.path}: {err.reason}", SkippedImageWarning, stacklevel=3)

    def _batch(self, pending: list[tuple[int, np.ndarray]]) -> Batch:
        indices = np.asarray([i for i, _ in pending], np.int64)
        return Batch(images=np.stack([p for _, p in pending]),
                     labels=None if self.labels is None else self.labels[indices],
                     ids=tuple(self.ids[i] for i in indices), indices=indices)
