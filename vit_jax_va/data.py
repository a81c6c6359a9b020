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
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from vit_jax_va.config import ViTConfig
from vit_jax_va.preprocess import preprocess

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm", ".pbm")
# 40 megapixels: larger than any camera photo a ViT sweep needs, small enough that one decoded
# image (160 MB as RGBA) cannot exhaust memory. PIL's own guard (89 MP warning, 179 MP error)
# is global state; this limit is per data set.
MAX_PIXELS = 40_000_000

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data file or folder cannot be used; the message names it."""


class ImageFileError(DataError):
    """One image file cannot be used: `path` and `reason` (the message is "path: reason")."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class UnsupportedModeError(ValueError):
    """A PIL image mode with no defined conversion to 8 bits."""


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


# Reading one image file --------------------------------------------------------------------------

def read_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS,
               background: int = 0) -> Image.Image:
    """Open an image file and return it as an 8-bit 'L' or 'RGB' PIL image (see `to_8bit`).

    Raises `ImageFileError` naming the file and the reason when it cannot be used: missing, empty,
    not an image, more than `max_pixels` pixels (checked from the header, before decoding, so a
    decompression bomb is never decoded), truncated or corrupt.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageFileError(path, f"cannot be read ({err.strerror or err})") from None
    if size == 0:
        raise ImageFileError(path, "empty file (0 bytes)")
    with warnings.catch_warnings():
        # We check the pixel count ourselves; PIL's global bomb guard would only warn here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                pixels = image.width * image.height
                if pixels > max_pixels:
                    raise ImageFileError(path, f"{image.width} x {image.height} = {pixels:,} pixels "
                                         f"is over the limit of {max_pixels:,} (possible decompression "
                                         f"bomb; raise max_pixels if the file is trusted)")
                image.load()
                return to_8bit(image, background=background)
        except Image.DecompressionBombError as err:
            raise ImageFileError(path, f"over PIL's pixel limit (possible decompression bomb): "
                                       f"{err}") from None
        except UnidentifiedImageError:
            raise ImageFileError(path, "not an image (PIL cannot identify the format)") from None
        except ImageFileError:
            raise
        except UnsupportedModeError as err:
            raise ImageFileError(path, str(err)) from None
        except (OSError, SyntaxError, ValueError, zlib.error, EOFError) as err:
            raise ImageFileError(path, f"truncated or corrupt image ({err})") from None


def pixel_digest(image: Image.Image | np.ndarray) -> str:
    """What an image is, as a sweep records it: the SHA-256 (hex) of its decoded pixels (an
    8-bit PIL image as `read_image` returns it, or a uint8 array `[h, w(, c)]`) with their shape.

    The pixels, not the file: they are what the model sees, and they are hashed in the reads a
    sweep makes anyway (the up-front check and each chunk), so recording them costs no extra
    read and a file swapped between two reads is caught. A file re-encoded without loss keeps its
    digest; one that a new decoder reads differently does not, and its results would differ."""
    pixels = np.ascontiguousarray(np.asarray(image))
    return hashlib.sha256(f"{pixels.dtype.str}{list(pixels.shape)}".encode() + pixels.tobytes()).hexdigest()


def to_8bit(image: Image.Image, *, background: int = 0) -> Image.Image:
    """Any PIL image -> 8-bit 'L' (greyscale sources) or 'RGB' (colour sources).

    - 16- and 32-bit integer greyscale ('I;16*', 'I'): the 16-bit range 0..65535 is scaled to
      0..255 (`round(v * 255 / 65535)`); PIL's own `convert('L')` would clip everything over 255.
    - Transparent images ('RGBA', 'LA', 'PA', palette with transparency): composited over a
      uniform `background` grey level (0 = black, Fashion-MNIST's background; 255 = white).
    - 'P' (palette), 'CMYK', 'YCbCr', '1', ...: PIL's conversion to RGB or L.
    - 'F' (float) has no defined 0..255 range and raises `UnsupportedModeError`.
    """
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.rint(values * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled)
    if mode == "F":
        raise UnsupportedModeError("floating-point pixels (mode 'F') have no defined 0..255 range")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        return image.convert("L")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        grey = image.mode in ("LA", "La")
        base = Image.new("RGBA", image.size, (background,) * 3 + (255,))
        return Image.alpha_composite(base, image.convert("RGBA")).convert("L" if grey else "RGB")
    return image.convert("RGB")


# IDX files (MNIST, Fashion-MNIST) ----------------------------------------------------------------

def _idx_magic(head: bytes) -> bool:
    """Whether `head` starts with an IDX magic number: 0, 0, a type code, the dimensions."""
    return len(head) >= 4 and head[0] == 0 and head[1] == 0 and head[2] in _IDX_DTYPES and head[3] > 0


def is_idx_file(path: str | os.PathLike) -> bool:
    """Whether `path` is an IDX file (plain or gzip-compressed), by its magic number, not its
    name: only the first bytes are read; False for anything that cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            if head[:2] == _GZIP_MAGIC:
                f.seek(0)
                with gzip.open(f) as unzipped:
                    head = unzipped.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return _idx_magic(head)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (plain or gzip-compressed, detected from its first bytes).

    Returns the array in the file's shape and native-endian dtype (uint8 `[N, 28, 28]` for
    MNIST images, uint8 `[N]` for labels). Raises `DataError` naming the file when the magic
    number, the header or the data length is wrong.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip data ({err})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    if not _idx_magic(raw):
        raise DataError(f"{path}: not an IDX file (magic number {raw[:4].hex()}; expected "
                        f"0000 + a type code in {sorted(f'{c:02x}' for c in _IDX_DTYPES)} + "
                        f"the number of dimensions)")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes; {ndim} dimensions need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != expected:
        what = "truncated" if have < expected else "has trailing bytes"
        raise DataError(f"{path}: {what}: shape {list(shape)} of {dtype.name} needs {expected:,} "
                        f"data bytes, the file has {have:,}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_mnist(directory: str | os.PathLike, split: str = "train", *,
               class_names: Sequence[str] = MNIST_CLASSES, name: str = "mnist") -> "ImageDataset":
    """MNIST-format IDX files in `directory`: `train-*` or `t10k-*` images and labels.

    Accepts `train-images-idx3-ubyte`, `train-images.idx3-ubyte` and either with `.gz`.
    Returns an `ImageDataset` with uint8 images `[N, 28, 28]`, labels `[N]`, ids `split/index`.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    directory = Path(directory)
    prefix = "train" if split == "train" else "t10k"
    files = {kind: _find_idx(directory, prefix, kind, ndim, name)
             for kind, ndim in (("images", 3), ("labels", 1))}
    images, labels = read_idx(files["images"]), read_idx(files["labels"])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{files['images']}: expected uint8 images [N, h, w]; got "
                        f"{images.dtype} {list(images.shape)}")
    if labels.ndim != 1:
        raise DataError(f"{files['labels']}: expected labels [N]; got {list(labels.shape)}")
    if len(labels) != len(images):
        raise DataError(f"{files['labels']} has {len(labels)} labels for the {len(images)} images "
                        f"of {files['images']}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise DataError(f"{files['labels']}: labels span {labels.min()}..{labels.max()}, outside "
                        f"0..{len(class_names) - 1}")
    description = {"source": name, "split": split, "directory": str(directory.absolute()),
                   "files": {kind: {"name": p.name, "sha256": _sha256(p)} for kind, p in files.items()}}
    return ImageDataset(images, labels=labels, class_names=class_names,
                        ids=[f"{split}/{i}" for i in range(len(images))], description=description)


def load_fashion_mnist(directory: str | os.PathLike = FASHION_MNIST_DIR,
                       split: str = "train") -> "ImageDataset":
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; MIT licence, (c) 2017 Zalando SE).

    The default directory is where `apt-get install dataset-fashion-mnist` puts the files.
    """
    return load_mnist(directory, split, class_names=FASHION_MNIST_CLASSES, name="fashion-mnist")


def _find_idx(directory: Path, prefix: str, kind: str, ndim: int, name: str) -> Path:
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    candidates = [directory / (stem + gz) for stem in stems for gz in ("", ".gz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    hint = " (apt-get install dataset-fashion-mnist)" if name == "fashion-mnist" else ""
    raise DataError(f"no {name} {kind} file in {directory}: looked for "
                    f"{', '.join(c.name for c in candidates)}{hint}")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Folders and file lists --------------------------------------------------------------------------

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
        dataset._record(None, ImageFileError(path, "not inside a class folder"), warn=False)
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


# The data set ------------------------------------------------------------------------------------

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

