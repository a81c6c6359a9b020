"""The batch sweep: importance, strength and patterns for every image, into a results store.

Stages (each resumable; see `vit_jax_va.store` for what they write):

1. analyse   per chunk of images: every head pruned alone in every mode (`ablate_heads`),
             Taylor importance, the strength statistics of every head, pattern items of the
             sampled images, full attention of the kept images. One `.npz` per chunk.
2. collect   chunks -> the store's arrays, streamed (memory does not grow with the run).
3. curve     cumulative pruning curves in the order of the mean probability drop, measured on
             every other image and ranked on the rest (held out).
4. patterns  autoencoders for the patch and CLS pattern items, 2-D maps, clusters.
5. overview  a 2-D layout of the images' pre-logit features (the image overview).

A killed sweep (even `kill -9`) started again with the same arguments continues from the last
finished chunk or stage and ends with the same results as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_jax_va import store
from vit_jax_va.checkpoint import model_identity
from vit_jax_va.data import ImageFileError, pixel_digest
from vit_jax_va.devices import local_data_mesh
from vit_jax_va.masks import PRUNE_MODES
from vit_jax_va.model import ViT
from vit_jax_va.preprocess import preprocess

if TYPE_CHECKING:
    from vit_jax_va.data import ImageDataset

STAGES = ("analyse", "collect", "curve", "patterns", "overview")


THUMBNAIL_PIXELS = 64


def _positions(positions: Sequence[int], shown: int = 6) -> str:
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


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """Settings of a sweep; all of them are recorded in the manifest.

    modes: prune modes swept for every head (`vit_jax_va.PRUNE_MODES`).
    batch_size: images per jitted call. chunk_size: images per resumable unit of work.
    keep_attention: which images keep their full attention `[L, H, T, T]`: a count N (the
      first N images) or a tuple of image positions in the run (0-based).
    pattern_images: images (seeded choice) whose per-head pattern items train the autoencoders.
    latent_dim, clusters, projection: the pattern space (`vit_jax_va.pattern_space`).
    curve_images: images the cumulative pruning curves are measured on (every other image of
      the run, at most this many; the heads are ranked on the others: held out).
    precision: JAX matmul precision of the sweep ("highest" = full float32 on GPU/TPU too).
    seed: every random choice (pattern sample, autoencoder, projections).
    """

    modes: tuple[str, ...] = PRUNE_MODES
    batch_size: int = 16
    chunk_size: int = 64
    keep_attention: int | tuple[int, ...] = 4
    pattern_images: int = 200
    latent_dim: int = 8
    clusters: int = 8
    projection: str = "tsne"
    curve_images: int = 256
    precision: str = "highest"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in PRUNE_MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {PRUNE_MODES}; got {self.modes}")
        if "head" not in self.modes:
            raise ValueError("modes must include 'head' (the curve and the summary rank heads by it)")
        for name in ("batch_size", "chunk_size", "pattern_images", "latent_dim", "clusters",
                     "curve_images"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        keep = self.keep_attention
        if isinstance(keep, (list, tuple)):
            if any(int(i) < 0 for i in keep):
                raise ValueError(f"keep_attention positions must be >= 0, got {tuple(keep)}")
            object.__setattr__(self, "keep_attention", tuple(sorted({int(i) for i in keep})))
        elif keep < 0:
            raise ValueError(f"keep_attention must be a count >= 0 or image positions, got {keep}")

    def kept_attention(self, num_images: int) -> np.ndarray:
        """Positions `[K]` of the images whose full attention the sweep keeps."""
        if isinstance(self.keep_attention, tuple):
            return np.asarray(self.keep_attention, np.int64)
        return np.arange(min(self.keep_attention, num_images))


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("vit-jax-va", "jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class Sweep:
    """One sweep run; `run()` does what is left to do. See the module docstring."""

    def __init__(self, model: ViT, source: "ImageDataset", out: str | Path, *,
                 options: SweepOptions = SweepOptions(), model_source: str = "",
                 log: Callable[[str], None] = print, progress: bool = True):
        if model.config.num_classes <= 0:
            raise ValueError("the sweep needs a model with a classifier (num_classes > 0)")
        if len(source) == 0:
            raise ValueError("the sweep got no images")
        outside = [int(i) for i in options.kept_attention(len(source)) if i >= len(source)]
        if outside:
            raise ValueError(f"keep_attention names image positions {outside}, but the sweep has "
                             f"{len(source)} images (0..{len(source) - 1})")
        self.model, self.source, self.options = model, source, options
        self.path = Path(out).absolute()
        self.log, self.progress = log, progress
        self.config = model.config
        self.num_images = len(source)
        # What each image is (`data.pixel_digest` of what the model sees), so that a run resumed
        # on changed data is refused instead of filing results under the wrong images.
        self.inputs = {"ids": list(source.ids), "pixels_sha256": source.fingerprints()}
        self.identity = {
            "schema_version": store.SCHEMA_VERSION,
            "model": {**model_identity(model), "source": model_source},
            "data": source.manifest(),
            "options": dataclasses.asdict(options),
            "images": {"count": self.num_images, "sha256": _inputs_digest(self.inputs)},
        }
        self.manifest: dict[str, Any] = {}

    # Manifest -----------------------------------------------------------------------------

    def _open(self) -> None:
        path = self.path / store.MANIFEST
        if path.is_file():
            manifest = store.read_manifest(self.path)
            self._check_images(manifest)
            for key in ("schema_version", "model", "data", "options"):
                differences = _differences(_jsonable(manifest.get(key)),
                                           _jsonable(self.identity[key]), key)
                if differences:
                    raise store.RunError(
                        f"{self.path} holds a run with other {key} settings ("
                        + "; ".join(differences[:5]) + "); choose another --out (or delete it)")
            self.manifest = manifest
        else:
            if self.path.exists() and not self.path.is_dir():
                raise store.RunError(f"{self.path} is a file, not a folder for a run; choose another --out")
            if self.path.exists() and any(self.path.iterdir()):
                raise store.RunError(f"{self.path} exists and is not a run; choose another --out")
            self.manifest = {**self.identity, "versions": _versions(), "stages_done": [],
                             "timings_s": {}, "complete": False, "created": time.time()}
            store.write_json(self.path / store.INPUTS, self.inputs)  # before the manifest
            store.write_json(path, self.manifest)

    def _check_images(self, manifest: dict[str, Any]) -> None:
        """Refuse to continue a run on other images than it was started on, naming them."""
        recorded = manifest.get("images")
        if recorded == self.identity["images"]:
            return
        if recorded is None:
            if manifest.get("complete"):
                return  # a finished run of a version that recorded no images: nothing to resume
            raise store.RunError(
                f"{self.path} holds an unfinished run of an earlier vit-jax-va, which recorded no "
                f"image digests, so it cannot be told whether its images are the ones given now; "
                f"choose another --out (or delete it)")
        try:
            before = store.read_json(self.path / store.INPUTS)
        except (OSError, ValueError):
            before = None
        changes = _image_changes(before, self.inputs) if before else [
            f"{recorded.get('count')} images before, {self.num_images} now"]
        raise store.RunError(
            f"{self.path} holds a run of other images than the ones given now: "
            + "; ".join(changes) + ". Its results so far belong to the images it was started on: "
            "restore them and run the same command to resume, or choose another --out")

    def _join(self) -> None:
        """A process other than 0: read the manifest process 0 opened (the run directory must
        be on storage every process sees) and check that it describes this sweep."""
        path = self.path / store.MANIFEST
        if not path.is_file():
            raise store.RunError(
                f"process {jax.process_index()} does not see {path}, which process 0 wrote: "
                "--out must be on storage every host sees")
        manifest = store.read_manifest(self.path)
        for key in ("schema_version", "model", "data", "options", "images"):
            differences = _differences(_jsonable(manifest.get(key)), _jsonable(self.identity[key]), key)
            if differences:
                raise store.RunError(f"process {jax.process_index()} has other {key} settings "
                                     f"than process 0 (" + "; ".join(differences[:5]) + ")")
        self.manifest = manifest

    def _done(self, stage: str, seconds: float, **extra: Any) -> None:
        self.manifest["stages_done"] = [*self.manifest["stages_done"], stage]
        self.manifest["timings_s"][stage] = round(
            self.manifest["timings_s"].get(stage, 0.0) + seconds, 3)
        self.manifest.update(extra)
        store.write_json(self.path / store.MANIFEST, self.manifest)

    # Run ----------------------------------------------------------------------------------

    def run(self) -> Path:
        """Do every stage not done yet; returns the run directory.

        With several JAX processes (`jax.distributed`), every process analyses its share of
        the image chunks (chunk i goes to process i mod P) on its own devices and writes them
        to the shared run directory; process 0 then does the remaining stages alone.
        """
        process, processes = jax.process_index(), jax.process_count()
        if process == 0:
            self._open()
        if processes > 1:
            _barrier("vit-va-sweep-open")
            if process != 0:
                self._join()
        if self.manifest.get("complete"):
            self.log(f"{self.path}: the sweep is already complete; nothing to do")
            return self.path
        with jax.default_matmul_precision(self.options.precision):
            for stage in STAGES:
                if stage in self.manifest["stages_done"] or (process != 0 and stage != "analyse"):
                    continue
                start = time.perf_counter()
                extra = getattr(self, f"_{stage}")() or {}
                if stage == "analyse" and processes > 1:
                    _barrier("vit-va-sweep-analysed")
                if process == 0:
                    self._done(stage, time.perf_counter() - start, **extra)
        if process != 0:
            self.log(f"process {process}: analysed its share of the chunks; process 0 "
                     "finishes the run")
            # Stay until process 0 is done: JAX's shutdown barrier times out when one
            # process leaves long before the others.
            _barrier("vit-va-sweep-done")
            return self.path
        store.remove_tree(self.path / "chunks")
        for space in ("patch", "cls"):
            for name in ("items", "item_image"):
                self._raw(space, name).unlink(missing_ok=True)
        self.manifest["complete"] = True
        store.write_json(self.path / store.MANIFEST, self.manifest)
        self._summary()
        if processes > 1:
            _barrier("vit-va-sweep-done")
        return self.path

    def _bar(self, total: int, desc: str, unit: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=not self.progress,
                    dynamic_ncols=True, file=sys.stderr)

    # Stage 1: analyse ---------------------------------------------------------------------

    def _chunks(self) -> list[tuple[int, int]]:
        size = self.options.chunk_size
        return [(s, min(s + size, self.num_images)) for s in range(0, self.num_images, size)]

    def _load(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Preprocessed images `[n, H, W, C]` and thumbnails `[n, h, w, c]` of `[start, stop)`,
        both made from one read of each file."""
        images, originals = self._read(range(start, stop))
        return images, np.stack([thumbnail(original, self.config) for original in originals])

    def _read(self, positions) -> tuple[np.ndarray, list]:
        """Preprocessed images `[n, H, W, C]` at these positions of the run, and the decoded images
        they were made from. An image that can no longer be read (its file changed since the
        sweep checked every file) stops the sweep with a `RunError` naming the file and the
        reason; the chunks written so far are kept."""
        originals, failed = [], []
        for position in (int(i) for i in positions):
            try:
                original = self.source.image(position)
            except ImageFileError as err:  # its message is "path: reason"
                failed.append((position, err))
                continue
            if pixel_digest(original) != self.inputs["pixels_sha256"][position]:
                failed.append((position, f"{self.source.ids[position]}: its pixels are not the ones "
                                         f"the run was started on"))
            originals.append(original)
        if failed:
            raise store.RunError(
                f"{len(failed)} image(s) of the run (position(s) {_positions([i for i, _ in failed])}) "
                f"could not be read again or are not what they were: the files changed after the "
                f"sweep checked them: "
                f"{'; '.join(str(err) for _, err in failed)}. "
                f"Restore them and run the same command to resume.")
        return preprocess(self.config, originals), originals

    def _pattern_sample(self) -> np.ndarray:
        rng = np.random.default_rng(self.options.seed)
        count = min(self.options.pattern_images, self.num_images)
        return np.sort(rng.choice(self.num_images, size=count, replace=False))

    def _analyse(self) -> dict:
        from vit_jax_va.head_scores import taylor_importance
        from vit_jax_va.importance import ablate_heads

        chunks = self._chunks()
        folder = self.path / "chunks"
        sampled = self._pattern_sample()
        labels_all = self.source.labels
        mesh = local_data_mesh()
        forward = _forward_fn(self.model)
        process, processes = jax.process_index(), jax.process_count()
        mine = [(i, s, e) for i, (s, e) in enumerate(chunks) if i % processes == process]
        todo = [(i, s, e) for i, s, e in mine if not (folder / f"{i:06d}.npz").is_file()]
        share = sum(e - s for _, s, e in mine)
        with self._bar(share, "analyse", "img") as bar:
            bar.update(share - sum(e - s for _, s, e in todo))
            for index, start, stop in todo:
                images, thumbnails = self._load(start, stop)
                labels = None if labels_all is None else np.asarray(labels_all[start:stop])
                ablation = ablate_heads(self.model, images, labels, modes=self.options.modes,
                                        batch_size=self.options.batch_size, mesh=mesh)
                taylor = taylor_importance(self.model, images, labels, per_image=True,
                                           batch_size=self.options.batch_size)
                chunk = {k: getattr(ablation, k) for k in _ABLATION_FIELDS}
                chunk["taylor"] = taylor
                chunk["thumbnails"] = thumbnails
                chunk.update(self._attention_statistics(forward, images, start, sampled))
                store.write_npz(folder / f"{index:06d}.npz", **chunk)
                bar.update(stop - start)
        return {}

    def _attention_statistics(self, forward, images: np.ndarray, start: int,
                              sampled: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: logits, features, strength statistics; pattern items of sampled images;
        full attention of kept images (written straight to attention/)."""
        from vit_jax_va.patterns import cls_maps, recentred_map
        from vit_jax_va.strength import strength_statistics

        c = self.config
        parts: dict[str, list[np.ndarray]] = {}
        batch = self.options.batch_size
        kept = self.options.kept_attention(self.num_images)
        for s in range(0, len(images), batch):
            sub = images[s:s + batch]
            n = len(sub)
            logits, pre_logits, attention = forward(jnp.asarray(_pad(sub, batch)))
            attention = attention[:n]
            stats = strength_statistics(attention, c.grid, c.num_prefix_tokens, c.patch_size)
            values = {"logits": logits[:n], "features": pre_logits[:n], **stats}
            index = start + s + np.arange(n)
            chosen = np.isin(index, sampled)
            if chosen.any():
                picked = attention[np.flatnonzero(chosen)]
                values["patch_items"] = recentred_map(picked, c.grid, c.num_prefix_tokens)
                if c.num_prefix_tokens:
                    values["cls_items"] = cls_maps(picked, c.grid, c.num_prefix_tokens)
                values["item_image"] = index[chosen]
            for i in np.flatnonzero(np.isin(index, kept)):
                store.write_arrays(self.path / "attention", **{str(index[i]): np.asarray(attention[i])})
            for key, value in values.items():
                parts.setdefault(key, []).append(np.asarray(value))
        return {k: np.concatenate(v) for k, v in parts.items()}

    # Stage 2: collect ---------------------------------------------------------------------

    def _collect(self) -> dict:
        folder = self.path / "chunks"
        paths = [folder / f"{i:06d}.npz" for i in range(len(self._chunks()))]
        n = self.num_images

        def parts(key):
            # Pattern items exist only in the chunks that hold sampled images.
            for path in paths:
                with np.load(path, allow_pickle=False) as data:
                    if key in data.files:
                        yield data[key]

        def has(key):
            for path in paths:
                with np.load(path, allow_pickle=False) as data:
                    if key in data.files:
                        return True
            return False

        with self._bar(4, "collect", "group") as bar:
            importance = self.path / "importance"
            for key in _ABLATION_FIELDS:
                axis = 3 if key in _PER_HEAD else 0
                store.concatenate_to_npy(importance, key, parts(key), axis=axis, total=n)
            store.concatenate_to_npy(importance, "taylor", parts("taylor"), axis=2, total=n)
            store.write_arrays(importance, modes=np.asarray(self.options.modes))
            bar.update(1)
            strength = self.path / "strength"
            for key in ("profile", "entropy", "mean_distance", "cls_share", "confidence"):
                store.concatenate_to_npy(strength, key, parts(key), axis=0, total=n)
            bar.update(1)
            images = self.path / "images"
            store.concatenate_to_npy(images, "features", parts("features"), axis=0, total=n)
            store.concatenate_to_npy(images, "thumbnails", parts("thumbnails"), axis=0, total=n)
            logits = np.concatenate(list(parts("logits")))
            probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
            labels = (np.full(n, -1, np.int64) if self.source.labels is None
                      else np.asarray(self.source.labels, np.int64))
            store.write_arrays(images, ids=np.asarray([str(i) for i in self.source.ids]),
                               labels=labels, prediction=probs.argmax(-1), probs=probs)
            bar.update(1)
            sample = len(self._pattern_sample())
            for space, key in (("patch", "patch_items"), ("cls", "cls_items")):
                if has(key):
                    target = self.path / "patterns" / space
                    store.concatenate_to_npy(target, "raw_items", parts(key), axis=0, total=sample)
                    store.concatenate_to_npy(target, "raw_item_image", parts("item_image"), axis=0,
                                             total=sample)
            bar.update(1)
        correct = probs.argmax(-1) == labels
        return {"accuracy": float(correct.mean()) if self.source.labels is not None else None}

    # Stage 3: curve -----------------------------------------------------------------------

    def _curve(self) -> dict:
        from vit_jax_va.pruning_curve import pruning_curve

        run = store.Run(self.path, self.manifest)
        imp = run.arrays("importance")
        head = list(self.options.modes).index("head")
        ranking, measured = self._curve_split()
        drop = (np.asarray(imp["baseline_prob"])[None, None, ranking]
                - np.asarray(imp["prob"][head][..., ranking])).mean(-1)
        images, _ = self._read(measured)
        labels = None if self.source.labels is None else np.asarray(self.source.labels)[measured]
        curves = {}
        with self._bar(2, "curve", "order") as bar:
            for name, first in (("most", True), ("least", False)):
                curve = pruning_curve(self.model, images, drop, labels, most_important_first=first,
                                      batch_size=self.options.batch_size)
                curves[f"order_{name}"] = curve.order
                curves[f"accuracy_{name}"] = curve.accuracy
                curves[f"prob_{name}"] = curve.mean_prob
                curves["num_pruned"] = curve.num_pruned
                bar.update(1)
        store.write_arrays(self.path / "curve", metric=np.asarray("prob_drop"),
                           num_images=np.asarray(len(measured)), images=measured,
                           ranking_images=ranking, **curves)
        return {}

    def _curve_split(self) -> tuple[np.ndarray, np.ndarray]:
        """(ranking, measured) image positions of the curve stage: the curves are measured on
        every other image (positions 1, 3, 5, ..., at most `curve_images` of them) and the heads
        are ranked on all the others, so the curve checks the ranking on images it was not
        made from; interleaving keeps both halves alike when images come sorted by class. A
        one-image run ranks and measures on that image."""
        positions = np.arange(self.num_images)
        if self.num_images < 2:
            return positions, positions
        measured = positions[1::2][:self.options.curve_images]
        return np.setdiff1d(positions, measured), measured

    # Stage 4: patterns --------------------------------------------------------------------

    def _patterns(self) -> dict:
        from vit_jax_va.autoencoder import (reconstruction_errors, save_autoencoder,
                                            train_autoencoder)
        from vit_jax_va.patterns import pattern_space

        c = self.config
        errors = {}
        # The stage reads `raw_*` (written by `collect`) and never changes them, so a run killed
        # anywhere in here redoes the stage from the same inputs; `run` deletes them at the end.
        spaces = [s for s in ("patch", "cls") if (self._raw(s, "items")).is_file()]
        with self._bar(len(spaces), "patterns", "space") as bar:
            for space in spaces:
                folder = self.path / "patterns" / space
                raw = np.load(self._raw(space, "items"))  # [images, L, H, ...]
                image = np.load(self._raw(space, "item_image"))  # [images]
                items = raw.reshape(-1, *raw.shape[3:])
                head = np.tile(np.arange(c.num_heads_total), len(raw))
                item_image = np.repeat(image, c.num_heads_total)
                heldout = _heldout_items(len(raw), c.num_heads_total, self.options.seed)
                autoencoder, log = train_autoencoder(items[~heldout], latent_dim=self.options.latent_dim,
                                                     seed=self.options.seed)
                err = reconstruction_errors(autoencoder, items[~heldout], items[heldout])
                result = pattern_space(autoencoder, items, head, num_heads=c.num_heads_total,
                                       n_clusters=min(self.options.clusters, len(items)),
                                       projection=self.options.projection, seed=self.options.seed)
                save_autoencoder(autoencoder, folder / "autoencoder", overwrite=True)
                store.write_arrays(folder, items=items, item_image=item_image, item_head=head,
                                   errors=np.asarray([err.autoencoder, err.pca]),
                                   **dataclasses.asdict(result))
                errors[space] = {"autoencoder_mse": err.autoencoder, "pca_mse": err.pca,
                                 "components": err.components, "epochs": len(log.train_loss)}
                bar.update(1)
        return {"pattern_errors": errors}

    def _raw(self, space: str, name: str) -> Path:
        return self.path / "patterns" / space / f"raw_{name}.npy"

    # Stage 5: overview --------------------------------------------------------------------

    def _overview(self) -> dict:
        features = np.load(self.path / "images" / "features.npy")
        with self._bar(1, "overview", "layout") as bar:
            store.write_arrays(self.path / "images",
                               overview_xy=image_layout(features, seed=self.options.seed))
            bar.update(1)
        return {}

    # Summary ------------------------------------------------------------------------------

    def _summary(self) -> None:
        run = store.open_run(self.path)
        imp = run.arrays("importance")
        c = self.config
        head = list(self.options.modes).index("head")
        drop = (np.asarray(imp["baseline_prob"])[None, None] - np.asarray(imp["prob"][head])).mean(-1)
        top = np.argsort(-drop.reshape(-1))[:5]
        lines = [f"sweep complete: {self.path}",
                 f"  {self.num_images} images, {c.depth} layers x {c.num_heads} heads, "
                 f"{len(self.options.modes)} prune modes"]
        if self.manifest.get("accuracy") is not None:
            lines.append(f"  accuracy {self.manifest['accuracy']:.2%}")
        lines.append("  most important heads (mean drop of the reference-class probability when "
                     "pruned): " + ", ".join(f"L{h // c.num_heads}H{h % c.num_heads} "
                                             f"{drop.reshape(-1)[h]:+.3f}" for h in top))
        for space, err in self.manifest.get("pattern_errors", {}).items():
            lines.append(f"  {space} patterns: held-out MSE autoencoder {err['autoencoder_mse']:.4g}"
                         f" vs PCA {err['pca_mse']:.4g} ({err['components']} components)")
        lines.append("  time per stage: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in self.manifest["timings_s"].items()))
        self.log("\n".join(lines))


_PER_HEAD = ("prob", "correct", "loss", "kl", "top5_classes", "top5_probs")
_ABLATION_FIELDS = _PER_HEAD + ("baseline_prob", "baseline_correct", "baseline_loss",
                                "baseline_top5_classes", "baseline_top5_probs", "reference")


def image_layout(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D layout `[N, 2]` of image features `[N, C]` (t-SNE after PCA to 50 dims; PCA alone
    for a handful of images or more than 20,000)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    features = np.asarray(features, np.float64)
    n = len(features)
    if n < 5:
        return np.zeros((n, 2), np.float32) if n < 2 else PCA(2).fit_transform(
            np.pad(features, ((0, 0), (0, max(0, 2 - features.shape[1]))))).astype(np.float32)
    reduced = PCA(min(50, n, features.shape[1]), random_state=seed).fit_transform(features)
    if n > 20_000:
        return reduced[:, :2].astype(np.float32)
    tsne = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(reduced).astype(np.float32)


def _forward_fn(model: ViT):
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(images):
        out = nnx.merge(graphdef, state)(images, return_attention=True)
        return out.logits, out.pre_logits, out.attention

    return forward


def _heldout_items(num_images: int, heads: int, seed: int, fraction: float = 0.15) -> np.ndarray:
    """Bool `[num_images * heads]`: the items of a seeded `fraction` of the images (at least
    one), held out of autoencoder training. Whole images, so that held-out maps are never
    those of an image the autoencoder saw through another head."""
    rng = np.random.default_rng(seed)
    if num_images < 2:
        return rng.random(num_images * heads) < fraction
    held = np.zeros(num_images, bool)
    held[rng.choice(num_images, max(1, round(fraction * num_images)), replace=False)] = True
    return np.repeat(held, heads)


def _barrier(name: str) -> None:
    """Wait until every JAX process gets here."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    if len(array) == size:
        return array
    return np.concatenate([array, np.zeros((size - len(array), *array.shape[1:]), array.dtype)])


def _inputs_digest(inputs: dict[str, list[str]]) -> str:
    """One SHA-256 over the run's image ids and pixel digests, in order."""
    lines = "".join(f"{i}\t{d}\n" for i, d in zip(inputs["ids"], inputs["pixels_sha256"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def _image_changes(before: dict[str, list[str]], now: dict[str, list[str]], shown: int = 5) -> list[str]:
    """What differs between the images a run recorded and the ones given now, by id."""
    old = dict(zip(before["ids"], before["pixels_sha256"]))
    new = dict(zip(now["ids"], now["pixels_sha256"]))
    name = lambda ids: ", ".join(ids[:shown]) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")  # noqa: E731
    gone = [i for i in before["ids"] if i not in new]
    added = [i for i in now["ids"] if i not in old]
    changed = [i for i in now["ids"] if i in old and old[i] != new[i]]
    changes = ([f"gone: {name(gone)}"] if gone else []) + ([f"new: {name(added)}"] if added else []) + (
        [f"other pixels: {name(changed)}"] if changed else [])
    if not changes:
        changes = ["the same images in another order"]
    return changes


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=store._json_default))


def _differences(stored: Any, now: Any, path: str) -> list[str]:
    """Where two JSON values differ, as 'path: stored -> now' lines."""
    if isinstance(stored, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(stored) | set(now)):
            out += _differences(stored.get(key), now.get(key), f"{path}.{key}")
        return out
    if stored != now:
        return [f"{path}: {_brief(stored)} -> {_brief(now)}"]
    return []


def _brief(value: Any, limit: int = 80) -> str:
    import json

    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."
