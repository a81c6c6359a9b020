"""What a sweep runs on, from the names a user gives: a model, a data set and a run directory.

One resolution for every front end: `vit-va sweep`, the explorer's demo sweep, notebooks.

- model: "demo" (the shipped model), a vit_jax_va checkpoint directory, a Hugging Face model
  directory (`config.json` and weights; the `[hf]` extra), a Google `.npz` checkpoint, an ONNX
  graph exported from transformers (`.onnx`, the `[onnx]` extra), or a timm model name or
  checkpoint file (the `[timm]` extra); all but the first two are converted on the fly;
- data: "demo" (the shipped images), a folder of images (class sub-folders or flat), a folder
  of MNIST-style IDX files (its test split), a `.txt` list of image paths, or one image file.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

from vit_jax_va.data import ImageDataset
from vit_jax_va.model import ViT
from vit_jax_va.sweep import SweepOptions, usable_images


class MissingExtraError(RuntimeError):
    """Something needs an optional dependency that is not installed (names it and the fix)."""


def require_timm(what: str) -> None:
    """Raise `MissingExtraError` unless torch and timm can be imported (`converters` imports
    them lazily, so importing it alone proves nothing)."""
    _require(what, ("torch", "timm"), "timm")


def require_onnx(what: str) -> None:
    """Raise `MissingExtraError` unless onnx and onnxruntime can be imported."""
    _require(what, ("onnx", "onnxruntime"), "onnx")


def require_dinov2(what: str) -> None:
    """Raise `MissingExtraError` unless onnx, onnxruntime and scikit-image (the photographs of
    `vit-va demo dinov2`) can be imported."""
    _require(what, ("onnx", "onnxruntime", "skimage"), "dinov2")


def require_hf(what: str) -> None:
    """Raise `MissingExtraError` unless torch and transformers can be imported."""
    _require(what, ("torch", "transformers"), "hf")


def _require(what: str, modules: tuple[str, ...], extra: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(f"{what} needs {' and '.join(missing)}, which "
                                f"{'is' if len(missing) == 1 else 'are'} not installed: "
                                f"pip install 'vit-jax-va[{extra}]'")


def is_hf_source(spec: str | Path) -> bool:
    """A Hugging Face model: a directory with a `config.json` that is not a vit_jax_va
    checkpoint, or a hub name `hf:ORG/NAME`."""
    if str(spec).startswith("hf:"):
        return True
    path = Path(spec)
    return (path / "config.json").is_file() and not (path / "vit_jax_va.json").is_file()


def resolve_model(spec: str, model_name: str | None = None,
                  image_size: int | tuple[int, int] | None = None) -> ViT:
    """The model `spec` names (see the module docstring); `model_name` is the timm
    architecture of a checkpoint file.

    With `image_size` (pixels: an int or (height, width)), the model runs at that size: a
    converted model's position embedding is resampled by its source library (transformers'
    interpolation, timm's resampling; timm's for a `.npz` file), and a vit_jax_va checkpoint's
    (the demo's too) by timm's, so that needs the `[timm]` extra.
    """
    from vit_jax_va import checkpoint

    path = Path(spec)
    if is_hf_source(spec):
        require_hf(f"--model {spec!r} (a Hugging Face model)")
        import converters

        return converters.from_hf(spec, image_size=image_size)
    if spec == "demo" or path.is_dir():
        if spec == "demo":
            from vit_jax_va.demo import load_demo_model

            model = load_demo_model()
        else:
            model = checkpoint.load(path)
        if image_size is None or _pair(image_size) == model.config.image_size:
            return model
        require_timm(f"--model {spec!r} at another image size (timm resamples its position embedding)")
        import converters

        return converters.resized(model, image_size)
    if path.suffix.lower() == ".onnx":
        require_onnx(f"--model {spec!r} (an ONNX graph)")
        import converters

        return converters.from_onnx(path, image_size=image_size)
    if path.is_file() and path.suffix.lower() == ".npz":
        require_timm(f"--model {spec!r} (a Google .npz checkpoint)")
        import converters

        return converters.from_npz(path, image_size=image_size)
    require_timm(f"--model {spec!r} (not a vit_jax_va checkpoint directory, so a timm model "
                 "name or file to convert)")
    import converters

    return converters.from_timm(spec, model_name=model_name, image_size=image_size)


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resolve_data(spec: str) -> ImageDataset:
    """The images `spec` names (see the module docstring)."""
    from vit_jax_va import data

    if spec == "demo":
        from vit_jax_va.demo import load_demo_images

        return load_demo_images()
    path = Path(spec)
    if path.is_dir():
        # IDX data by the files' magic numbers (a photo named frame_idx01.png is a photo); image
        # files are not opened for it.
        if any(p.is_file() and p.suffix.lower() not in data.IMAGE_SUFFIXES and data.is_idx_file(p)
               for p in path.iterdir()):
            return data.load_mnist(path, split="test")
        return data.load_image_folder(path)
    if path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return data.load_image_files([path.parent / line for line in lines])
    if path.is_file():
        return data.load_image_files([path])
    raise FileNotFoundError(f"--data {spec!r}: no such folder or file")


def model_provenance(spec: str) -> str:
    """What a run's manifest records as the model's origin (`model.source`): "demo", a timm
    name or file as given, or a checkpoint directory made absolute, so that the explorer finds
    the model from any working directory."""
    return str(Path(spec).absolute()) if Path(spec).is_dir() else spec


def default_run_dir(model: str, data: str, runs_dir: str | Path = "runs") -> Path:
    """`RUNS_DIR/demo` for the demo model on the demo images, else `RUNS_DIR/MODEL-DATA`."""
    if model == "demo" and data == "demo":
        return Path(runs_dir) / "demo"
    return Path(runs_dir) / f"{Path(model).stem}-{Path(data).stem}"


@dataclasses.dataclass(frozen=True)
class SweepInputs:
    """Everything `vit_jax_va.Sweep` needs: `Sweep(i.model, i.dataset, i.out,
    options=i.options, model_source=i.model_source)`."""

    model: ViT
    dataset: ImageDataset
    options: SweepOptions
    out: Path
    model_source: str


def sweep_inputs(*, model: str = "demo", data: str = "demo", out: str | Path | None = None,
                 runs_dir: str | Path = "runs", images: int | None = None,
                 model_name: str | None = None, image_size: int | tuple[int, int] | None = None,
                 options: SweepOptions = SweepOptions(),
                 retire_stale_demo: bool = True,
                 log: Callable[[str], None] = print) -> SweepInputs:
    """Resolve a sweep's model, images and run directory.

    Args:
      model, data: what to sweep, as named in the module docstring.
      out: the run directory; default `default_run_dir(model, data, runs_dir)`.
      images: use only the first N readable images (unreadable files are skipped and logged).
      model_name: timm architecture of a checkpoint file.
      image_size: run the model at this size (`resolve_model`); the run's manifest records the
        config, so the explorer loads the model at the same size.
      retire_stale_demo: move aside a default demo run of an earlier demo model, so that the
        default sweep starts afresh (off under `--distributed`, where hosts share `out`).
    """
    if out is None:
        out = default_run_dir(model, data, runs_dir)
        if retire_stale_demo and model == "demo" and data == "demo":
            from vit_jax_va.demo import retire_stale_demo_run

            retire_stale_demo_run(out, log=log)
    return SweepInputs(model=resolve_model(model, model_name, image_size),
                       dataset=usable_images(resolve_data(data), images, log=log),
                       options=options, out=Path(out), model_source=model_provenance(model))
