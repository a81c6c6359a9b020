"""The results store: one directory per sweep run, in open formats.

Layout (every array is a `.npy` file that numpy, pandas and friends read without this package;
`np.load(path, mmap_mode="r")` maps large ones without reading them)::

    RUN/
      manifest.json       schema version, model (config, weights hash, source), data, options,
                          images (count, digest of inputs.json), library versions, timings,
                          stages done, complete flag
      inputs.json         ids [N] and pixels_sha256 [N]: what each image of the run is
      images/             ids [N] str, labels [N] int (-1: none), prediction [N]*, probs [N, K]*,
                          features [N, C] (pre-logits), overview_xy [N, 2], thumbnails [N, h, w, c]
      importance/         feature_cos, feature_rel_l2 [M, L, H, N]; patch_cos, patch_rel_l2
                          [M, L, H, N] (with the sweep's patch_tokens option); prob*, correct*,
                          loss*, kl* [M, L, H, N]; top5_classes*, top5_probs* [M, L, H, N, 5];
                          baseline_prob*, baseline_correct*, baseline_loss* [N];
                          baseline_top5_classes*, baseline_top5_probs* [N, 5]; reference* [N];
                          taylor* [L, H, N]; modes [M] str
      strength/           profile [N, L, H, rings]; entropy, mean_distance, cls_share,
                          confidence [N, L, H]
      curve/              order_most, order_least [L*H]; num_pruned [S]; feature_cos_most,
                          feature_cos_least, accuracy_most*, accuracy_least*, prob_most*,
                          prob_least* [S]; metric (str, 0-d: "prob_drop", or "feature_cos"
                          without a classifier)
      patterns/patch/     items, item_image, item_head, latents, xy, labels, prototypes, medoids,
      patterns/cls/       head_xy, head_shares, errors (autoencoder vs PCA); autoencoder/ (Orbax)
      attention/          IMAGE_INDEX.npy [L, H, T, T] for the images the run keeps
      chunks/             work in progress (removed when the run completes)

(*: only for a model with a classifier; a backbone's run has the feature metrics alone.)

Writes are atomic (temporary file, then rename), so a killed sweep never leaves a half-written
file that looks finished. `open_run` reads a store back and checks its schema version.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
INPUTS = "inputs.json"  # the run's image ids and pixel digests (`data.pixel_digest`)
GROUPS = ("images", "importance", "strength", "curve", "patterns/patch", "patterns/cls")


class RunError(ValueError):
    """A results store cannot be opened: missing, incomplete, from another schema version, or
    with a file that is broken or of the wrong shape (named)."""


# The shapes of the store's arrays in the sizes the manifest gives (docs/results-store.md): N
# images, L layers, H heads, M prune modes, K classes, k = min(5, K) top classes, F = L * H flat
# heads; None: any size. `open_run` checks every array it finds against them.
SHAPES: dict[str, tuple] = {
    **{f"images/{n}": ("N",) for n in ("ids", "labels", "prediction")},
    "images/probs": ("N", "K"), "images/features": ("N", None), "images/overview_xy": ("N", 2),
    "images/thumbnails": ("N", None, None, None),
    **{f"importance/{n}": ("M", "L", "H", "N") for n in ("prob", "correct", "loss", "kl", "feature_cos",
                                                          "feature_rel_l2", "patch_cos", "patch_rel_l2")},
    **{f"importance/{n}": ("M", "L", "H", "N", "k") for n in ("top5_classes", "top5_probs")},
    **{f"importance/{n}": ("N",) for n in ("baseline_prob", "baseline_correct", "baseline_loss", "reference")},
    **{f"importance/{n}": ("N", "k") for n in ("baseline_top5_classes", "baseline_top5_probs")},
    "importance/taylor": ("L", "H", "N"), "importance/modes": ("M",),
    **{f"strength/{n}": ("N", "L", "H") for n in ("entropy", "mean_distance", "cls_share", "confidence")},
    "strength/profile": ("N", "L", "H", None),
    "curve/order_most": ("F",), "curve/order_least": ("F",),
    **{f"patterns/{space}/{n}": shape for space in ("patch", "cls")
       for n, shape in (("head_xy", ("F", 2)), ("head_shares", ("F", None)))},
}


def _atomic_tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_tmp(path)
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def jsonable(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, numpy scalars numbers, ...)."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def write_arrays(folder: str | os.PathLike, **arrays: Any) -> None:
    """Write each array as `folder/NAME.npy`, atomically per file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in arrays.items():
        path = folder / f"{name}.npy"
        tmp = _atomic_tmp(path)
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(value), allow_pickle=False)
        os.replace(tmp, path)


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Write one `.npz` atomically (used for chunks of work in progress)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _atomic_tmp(path)
    with open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    os.replace(tmp, path)


def concatenate_to_npy(folder: str | os.PathLike, name: str, parts: Iterator[np.ndarray] | list,
                       axis: int, total: int) -> None:
    """Stream parts along `axis` into `folder/NAME.npy` without holding the whole array.

    `parts` is consumed once; each part must have the same shape off `axis`. The file is
    written to a temporary name and renamed when complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npy"
    tmp = _atomic_tmp(path)
    out = None
    offset = 0
    for part in parts:
        part = np.asarray(part)
        if out is None:
            shape = list(part.shape)
            shape[axis] = total
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=part.dtype, shape=tuple(shape))
        index = [slice(None)] * part.ndim
        index[axis] = slice(offset, offset + part.shape[axis])
        out[tuple(index)] = part
        offset += part.shape[axis]
    if out is None or offset != total:
        del out
        tmp.unlink(missing_ok=True)
        raise ValueError(f"{name}: parts cover {offset} of {total} entries along axis {axis}")
    out.flush()
    del out
    os.replace(tmp, path)


def remove_tree(path: str | os.PathLike) -> None:
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)


# Reading ----------------------------------------------------------------------------------

class Run:
    """A results store opened by `open_run`. Arrays load lazily (memory-mapped) by group."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, {self.num_images} images, "
                f"{self.manifest['model']['config']['depth']}x{self.manifest['model']['config']['num_heads']} heads)")

    @property
    def num_images(self) -> int:
        return int(self.manifest["data"]["num_images"])

    @property
    def config(self):
        from vit_jax_va.config import ViTConfig

        return ViTConfig.from_dict(self.manifest["model"]["config"])

    @property
    def class_names(self) -> list[str]:
        names = self.manifest["data"].get("class_names")
        if names:
            return list(names)
        return [str(k) for k in range(self.config.num_classes)]

    def arrays(self, group: str) -> dict[str, np.ndarray]:
        """Every array of a group (e.g. "importance", "patterns/patch"), memory-mapped."""
        folder = self.path / group
        if not folder.is_dir():
            raise RunError(f"{self.path} has no {group}/ (known groups: {self.groups()})")
        return {p.stem: load_npy(p, mmap=True) for p in sorted(folder.glob("*.npy"))}

    def array(self, group: str, name: str) -> np.ndarray:
        path = self.path / group / f"{name}.npy"
        if not path.is_file():
            raise RunError(f"{self.path} has no {group}/{name}.npy")
        return load_npy(path, mmap=True)

    def sizes(self) -> dict[str, int | None]:
        """The sizes `SHAPES` names, from the manifest (None: the manifest does not say)."""
        config = self.manifest.get("model", {}).get("config", {})
        depth, heads, classes = (config.get(k) for k in ("depth", "num_heads", "num_classes"))
        modes = self.manifest.get("options", {}).get("modes")
        return {"N": self.manifest.get("data", {}).get("num_images"), "L": depth, "H": heads,
                "F": depth * heads if depth and heads else None, "K": classes,
                "k": min(5, classes) if classes else None, "M": len(modes) if modes else None}

    def check_arrays(self) -> None:
        """Open every array of the store (memory-mapped: headers only) and check its shape
        against the manifest; `RunError` names the first file that is broken or of the wrong
        shape."""
        sizes = self.sizes()
        for path in sorted(self.path.glob("**/*.npy")):
            relative = path.relative_to(self.path)
            if relative.parts[0] == "chunks" or "autoencoder" in relative.parts:
                continue
            array = load_npy(path, mmap=True)
            key = relative.with_suffix("").as_posix()
            expected = SHAPES.get(key) or (("L", "H", None, None) if relative.parts[0] == "attention" else None)
            if expected is None:
                continue
            wanted = [sizes[d] if isinstance(d, str) else d for d in expected]
            if len(array.shape) != len(wanted) or any(w is not None and w != n for w, n in zip(wanted, array.shape)):
                described = ", ".join(f"{d}={sizes[d]}" if isinstance(d, str) else ("any" if d is None else str(d))
                                      for d in expected)
                raise RunError(f"{path} has shape {list(array.shape)}, but the run's manifest implies "
                               f"[{described}]: the file is not this run's; sweep the run again")

    def groups(self) -> list[str]:
        return [g for g in GROUPS if (self.path / g).is_dir()]

    def kept_attention(self) -> list[int]:
        """Indices of the images whose full attention the run keeps."""
        return sorted(int(p.stem) for p in (self.path / "attention").glob("*.npy"))

    def attention(self, image: int) -> np.ndarray:
        """Full attention `[L, H, T, T]` of a kept image (see `kept_attention`)."""
        path = self.path / "attention" / f"{int(image)}.npy"
        if not path.is_file():
            raise RunError(f"{self.path} keeps no attention for image {image}; "
                           f"it keeps {self.kept_attention()}")
        return load_npy(path)

    def autoencoder(self, space: str = "patch"):
        from vit_jax_va.autoencoder import load_autoencoder

        return load_autoencoder(self.path / "patterns" / space / "autoencoder")


def load_npy(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """A `.npy` file of a run (`mmap`: memory-mapped); `RunError` naming the file when it is
    truncated or corrupt (numpy alone says "mmap length is greater than file size")."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise RunError(f"{path} is truncated or corrupt ({err}); sweep the run again") from None


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file of a run (`RunError` naming the file if it is not valid JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON: {err}") from None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise RunError(f"no run at {path}")
    if not manifest_path.is_file():
        raise RunError(f"{path} is not a vit_jax_va run: it has no {MANIFEST}")
    return read_json(manifest_path)


def open_run(path: str | os.PathLike, *, allow_incomplete: bool = False) -> Run:
    """Open a results store written by `vit-va sweep`.

    Raises `RunError` naming the problem when the directory is not a run, was written with
    another schema version, is incomplete (unless `allow_incomplete`: then the stages that are
    done can be read), or holds a broken array or one of the wrong shape (`Run.check_arrays`).
    """
    path = Path(path).absolute()
    manifest = read_manifest(path)
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunError(f"{path} was written with results-store schema version {version}; this "
                       f"vit_jax_va reads version {SCHEMA_VERSION}: run the sweep again")
    if not manifest.get("complete") and not allow_incomplete:
        done = manifest.get("stages_done", [])
        raise RunError(f"{path} is incomplete (stages done: {', '.join(done) or 'none'}); "
                       "run the same `vit-va sweep` command again to finish it")
    run = Run(path, manifest)
    run.check_arrays()
    return run


def list_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories directly under `root` (those with a manifest), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file())
