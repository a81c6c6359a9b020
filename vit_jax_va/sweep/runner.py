"""`Sweep`: the resumable runner of the sweep's stages (`vit_jax_va.sweep.stages`).

It owns the run directory: the manifest (what the run is, which stages are done), one `.npz`
per analysed chunk of images, the store's arrays; the chunks are shared out over the JAX
processes of a multi-host run. Every write is atomic, so a killed sweep (even `kill -9`)
started again with the same arguments continues from the last finished chunk or stage.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax_va import batching, store
from vit_jax_va.checkpoint import model_identity
from vit_jax_va.data import ImageFileError, pixel_digest
from vit_jax_va.devices import local_data_mesh
from vit_jax_va.importance import HeadAblation
from vit_jax_va.model import ViT
from vit_jax_va.preprocess import preprocess
from vit_jax_va.sweep import identity as run_identity
from vit_jax_va.sweep import stages
from vit_jax_va.sweep.progress import StageProgress, terminal_progress
from vit_jax_va.sweep.images import describe_positions, thumbnail
from vit_jax_va.sweep.options import STAGES, SweepOptions

if TYPE_CHECKING:
    from vit_jax_va.data import ImageDataset


class Sweep:
    """One sweep run; `run()` does what is left to do. See the module docstring."""

    def __init__(self, model: ViT, dataset: "ImageDataset", out: str | Path, *,
                 options: SweepOptions = SweepOptions(), model_source: str = "",
                 log: Callable[[str], None] = print,
                 progress: bool | Callable[[str, int, int], None] = True):
        """Args:
          model: a `ViT`; without a classifier (a backbone) the run holds the feature metrics
            and no metric of the prediction (`vit-va probe` fits a classifier for those).
          dataset: the images (`usable_images` of a data set).
          out: the run directory (created, or an unfinished run of the same settings resumed).
          options: `SweepOptions`; model_source: the model's origin, recorded in the manifest
            ("demo", a checkpoint directory) so that the explorer can load it again.
          log: where the summary and notices go.
          progress: True for a terminal progress bar per stage, False for none, or a function
            `progress(stage, done, total)` called as each stage advances.
        """
        if len(dataset) == 0:
            raise ValueError("the sweep got no images")
        outside = [int(i) for i in options.kept_attention(len(dataset)) if i >= len(dataset)]
        if outside:
            raise ValueError(f"keep_attention names image positions {outside}, but the sweep has "
                             f"{len(dataset)} images (0..{len(dataset) - 1})")
        self.model, self.dataset, self.options = model, dataset, options
        self.path = Path(out).absolute()
        self.log = log
        self.progress = progress if callable(progress) else (terminal_progress() if progress else None)
        self.config = model.config
        self.num_images = len(dataset)
        # What each image is (`data.pixel_digest` of what the model sees), so that a run resumed
        # on changed data is refused instead of filing results under the wrong images.
        self.inputs = {"ids": list(dataset.ids), "pixels_sha256": dataset.fingerprints()}
        self.identity = {
            "schema_version": store.SCHEMA_VERSION,
            "model": {**model_identity(model), "source": model_source},
            "data": dataset.manifest(),
            "options": dataclasses.asdict(options),
            "images": {"count": self.num_images, "sha256": run_identity.inputs_digest(self.inputs)},
        }
        self.manifest: dict[str, Any] = {}

    # Manifest -----------------------------------------------------------------------------

    def _open(self) -> None:
        path = self.path / store.MANIFEST
        if path.is_file():
            manifest = store.read_manifest(self.path)
            self._check_images(manifest)
            for key in ("schema_version", "model", "data", "options"):
                differences = run_identity.setting_differences(manifest, self.identity, key)
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
            self.manifest = {**self.identity, "versions": run_identity.versions(), "stages_done": [],
                             "timings_s": {}, "complete": False, "created": time.time()}
            store.write_json(self.path / store.INPUTS, self.inputs)  # before the manifest
            store.write_json(path, self.manifest)

    def _check_images(self, manifest: dict[str, Any]) -> None:
        """Refuse to continue a run on other images than it was started on, naming them."""
        refusal = run_identity.image_refusal(self.path, manifest, self.identity["images"], self.inputs)
        if refusal:
            raise store.RunError(refusal)

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
            differences = run_identity.setting_differences(manifest, self.identity, key)
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

    def _bar(self, total: int, stage: str) -> StageProgress:
        return StageProgress(self.progress, stage, total)

    # Stage 1: analyse ---------------------------------------------------------------------

    def _chunks(self) -> list[tuple[int, int]]:
        return batching.bounds(self.num_images, self.options.chunk_size)

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
                original = self.dataset.image(position)
            except ImageFileError as err:  # its message is "path: reason"
                failed.append((position, err))
                continue
            if pixel_digest(original) != self.inputs["pixels_sha256"][position]:
                failed.append((position, f"{self.dataset.ids[position]}: its pixels are not the ones "
                                         f"the run was started on"))
            originals.append(original)
        if failed:
            raise store.RunError(
                f"{len(failed)} image(s) of the run (position(s) {describe_positions([i for i, _ in failed])}) "
                f"could not be read again or are not what they were: the files changed after the "
                f"sweep checked them: "
                f"{'; '.join(str(err) for _, err in failed)}. "
                f"Restore them and run the same command to resume.")
        return preprocess(self.config, originals), originals

    def _pattern_sample(self) -> np.ndarray:
        return stages.pattern_sample(self.num_images, self.options)

    def _analyse(self) -> dict:
        chunks = self._chunks()
        folder = self.path / "chunks"
        sampled = self._pattern_sample()
        kept = self.options.kept_attention(self.num_images)
        labels_all = self.dataset.labels
        mesh = local_data_mesh()
        forward = stages.attention_forward(self.model)
        process, processes = jax.process_index(), jax.process_count()
        mine = [(i, s, e) for i, (s, e) in enumerate(chunks) if i % processes == process]
        todo = [(i, s, e) for i, s, e in mine if not (folder / f"{i:06d}.npz").is_file()]
        share = sum(e - s for _, s, e in mine)
        with self._bar(share, "analyse") as bar:
            bar.update(share - sum(e - s for _, s, e in todo))
            for index, start, stop in todo:
                images, thumbnails = self._load(start, stop)
                labels = None if labels_all is None else np.asarray(labels_all[start:stop])
                chunk, attention = stages.analyse_chunk(
                    self.model, images, labels, np.arange(start, stop), self.options,
                    sampled=sampled, kept=kept, forward=forward, mesh=mesh)
                for position, matrix in attention.items():
                    store.write_arrays(self.path / "attention", **{str(position): matrix})
                store.write_npz(folder / f"{index:06d}.npz", **chunk, thumbnails=thumbnails)
                bar.update(stop - start)
        return {}

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

        with self._bar(4, "collect") as bar:
            importance = self.path / "importance"
            axes = HeadAblation.image_axes()
            for key in (*stages.ABLATION_FIELDS, "taylor"):
                if has(key):  # the class metrics and Taylor need a classifier
                    store.concatenate_to_npy(importance, key, parts(key), axis=axes.get(key, 2), total=n)
            store.write_arrays(importance, modes=np.asarray(self.options.modes))
            bar.update(1)
            strength = self.path / "strength"
            for key in ("profile", "entropy", "mean_distance", "cls_share", "confidence"):
                store.concatenate_to_npy(strength, key, parts(key), axis=0, total=n)
            bar.update(1)
            images = self.path / "images"
            store.concatenate_to_npy(images, "features", parts("features"), axis=0, total=n)
            store.concatenate_to_npy(images, "thumbnails", parts("thumbnails"), axis=0, total=n)
            labels = (np.full(n, -1, np.int64) if self.dataset.labels is None
                      else np.asarray(self.dataset.labels, np.int64))
            store.write_arrays(images, ids=np.asarray([str(i) for i in self.dataset.ids]),
                               labels=labels)
            accuracy = None
            if self.config.num_classes > 0:
                logits = np.concatenate(list(parts("logits")))
                probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
                store.write_arrays(images, prediction=probs.argmax(-1), probs=probs)
                if self.dataset.labels is not None:
                    accuracy = float((probs.argmax(-1) == labels).mean())
            bar.update(1)
            sample = len(self._pattern_sample())
            for space, key in (("patch", "patch_items"), ("cls", "cls_items")):
                if has(key):
                    target = self.path / "patterns" / space
                    store.concatenate_to_npy(target, "raw_items", parts(key), axis=0, total=sample)
                    store.concatenate_to_npy(target, "raw_item_image", parts("item_image"), axis=0,
                                             total=sample)
            bar.update(1)
        return {"accuracy": accuracy}

    # Stage 3: curve -----------------------------------------------------------------------

    def _curve(self) -> dict:
        imp = store.Run(self.path, self.manifest).arrays("importance")
        head = list(self.options.modes).index("head")
        ranking, measured = stages.curve_split(self.num_images, self.options.curve_images)
        images, _ = self._read(measured)
        labels = None if self.dataset.labels is None else np.asarray(self.dataset.labels)[measured]
        metric, scores = stages.ranking(imp, head, ranking)
        with self._bar(2, "curve") as bar:
            curves = stages.pruning_curves(self.model, images, labels, scores,
                                           self.options.batch_size, on_curve=bar.update)
        store.write_arrays(self.path / "curve", metric=np.asarray(metric),
                           num_images=np.asarray(len(measured)), images=measured,
                           ranking_images=ranking, **curves)
        return {}

    # Stage 4: patterns --------------------------------------------------------------------

    def _patterns(self) -> dict:
        from vit_jax_va.autoencoder import save_autoencoder

        errors = {}
        # The stage reads `raw_*` (written by `collect`) and never changes them, so a run killed
        # anywhere in here redoes the stage from the same inputs; `run` deletes them at the end.
        spaces = [s for s in ("patch", "cls") if (self._raw(s, "items")).is_file()]
        with self._bar(len(spaces), "patterns") as bar:
            for space in spaces:
                folder = self.path / "patterns" / space
                autoencoder, arrays, errors[space] = stages.pattern_stage(
                    np.load(self._raw(space, "items")), np.load(self._raw(space, "item_image")),
                    self.options)
                save_autoencoder(autoencoder, folder / "autoencoder", overwrite=True)
                store.write_arrays(folder, **arrays)
                bar.update(1)
        return {"pattern_errors": errors}

    def _raw(self, space: str, name: str) -> Path:
        return self.path / "patterns" / space / f"raw_{name}.npy"

    # Stage 5: overview --------------------------------------------------------------------

    def _overview(self) -> dict:
        features = np.load(self.path / "images" / "features.npy")
        with self._bar(1, "overview") as bar:
            store.write_arrays(self.path / "images",
                               overview_xy=stages.image_layout(features, seed=self.options.seed))
            bar.update(1)
        return {}

    # Summary ------------------------------------------------------------------------------

    def _summary(self) -> None:
        run = store.open_run(self.path)
        imp = run.arrays("importance")
        c = self.config
        head = list(self.options.modes).index("head")
        metric, drop = stages.ranking(imp, head, np.arange(self.num_images))
        top = np.argsort(-drop.reshape(-1))[:5]
        lines = [f"sweep complete: {self.path}",
                 f"  {self.num_images} images, {c.depth} layers x {c.num_heads} heads, "
                 f"{len(self.options.modes)} prune modes"]
        if self.manifest.get("accuracy") is not None:
            lines.append(f"  accuracy {self.manifest['accuracy']:.2%}")
        if metric == "feature_cos":
            lines.append("  no classifier: the heads are ranked by what pruning them does to the pooled "
                         "features (vit-va probe fits a classifier for the class metrics)")
        meaning = {"prob_drop": "mean drop of the reference-class probability when pruned",
                   "feature_cos": "mean 1 - cosine similarity of the pooled features when pruned"}
        lines.append(f"  most important heads ({meaning[metric]}): " + ", ".join(f"L{h // c.num_heads}H{h % c.num_heads} "
                                             f"{drop.reshape(-1)[h]:+.3f}" for h in top))
        for space, err in self.manifest.get("pattern_errors", {}).items():
            lines.append(f"  {space} patterns: held-out MSE autoencoder {err['autoencoder_mse']:.4g}"
                         f" vs PCA {err['pca_mse']:.4g} ({err['components']} components)")
        lines.append("  time per stage: " + ", ".join(
            f"{k} {v:.1f} s" for k, v in self.manifest["timings_s"].items()))
        self.log("\n".join(lines))


def _barrier(name: str) -> None:
    """Wait until every JAX process gets here."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)
