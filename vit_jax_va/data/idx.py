"""IDX files (MNIST, Fashion-MNIST): the format, read by its magic number, and the loaders."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vit_jax_va.data.dataset import ImageDataset
from vit_jax_va.data.images import DataError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
# Where Debian's `dataset-fashion-mnist` package puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


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
