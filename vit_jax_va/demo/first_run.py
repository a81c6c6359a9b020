"""The first run: the shipped demo model on the first 64 shipped images, swept in advance and
shipped inside the package (`first-run.tar.xz`, about 6 MB), so that a fresh install can explore
at once while the full demo run (1,000 images, several minutes on 2 cores) is computed.

It is an ordinary results store (`vit_jax_va.store`), made by the same sweep as `vit-va sweep
--images 64 --keep-attention 0 --pattern-images 32` (no full attention kept: the explorer
computes an image's attention live; 32 images' items train the pattern autoencoders, to keep the
archive small). `tests/test_first_run.py` checks that the archive equals a fresh sweep of the same
images with the shipped model; after the demo model or the sweep changes, write it again:

    python -m vit_jax_va.demo.first_run          # about 2 minutes on 2 cores

`unpack(runs_dir)` puts it at `runs_dir/demo-first-64` (the explorer does this when the demo run
does not exist yet); a later start finds the full run `demo` and opens that.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from vit_jax_va.demo import DEMO_DIR
from vit_jax_va.sweep import SweepOptions

NAME = "demo-first-64"
IMAGES = 64
OPTIONS = SweepOptions(keep_attention=0, pattern_images=32)
ARCHIVE = DEMO_DIR / "first-run.tar.xz"


def sweep(out: str | Path, log: Callable[[str], None] = print, progress=False) -> Path:
    """Sweep the first run afresh into `out` (what the archive holds); returns `out`."""
    from vit_jax_va.inputs import sweep_inputs
    from vit_jax_va.sweep import Sweep

    inputs = sweep_inputs(out=out, images=IMAGES, options=OPTIONS, log=log)
    return Sweep(inputs.model, inputs.dataset, inputs.out, options=inputs.options,
                 model_source=inputs.model_source, log=log, progress=progress).run()


def write_archive(archive: str | Path = ARCHIVE, log: Callable[[str], None] = print) -> Path:
    """Sweep the first run afresh and pack it into `archive` (replaced only when complete)."""
    archive = Path(archive)
    with tempfile.TemporaryDirectory() as tmp:
        run = sweep(Path(tmp) / NAME, log=log, progress=True)
        partial = archive.with_name(archive.name + ".partial")
        with tarfile.open(partial, "w:xz", preset=9) as tar:
            tar.add(run, arcname=NAME, filter=_plain)
        os.replace(partial, archive)
    log(f"wrote {archive} ({archive.stat().st_size / 1e6:.1f} MB)")
    return archive


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A member without this machine's owner or permissions."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def shipped_manifest(archive: str | Path = ARCHIVE) -> dict:
    """The manifest of the run inside `archive`."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile(f"{NAME}/manifest.json")
        if member is None:
            raise FileNotFoundError(f"{archive} holds no {NAME}/manifest.json")
        return json.load(member)


def unpack(runs_dir: str | Path, archive: str | Path = ARCHIVE) -> Path:
    """The first run at `runs_dir/demo-first-64`, unpacked from `archive` unless it is there
    already (the same manifest). An earlier copy (another manifest: an older package's) is
    replaced; a directory of that name that is not a demo run is refused (`FileExistsError`),
    not touched. Safe when several processes unpack at once (each unpacks aside, then renames)."""
    from vit_jax_va import store

    runs_dir = Path(runs_dir)
    target = runs_dir / NAME
    shipped = shipped_manifest(archive)
    if target.exists():
        try:
            current = store.read_manifest(target)
        except store.RunError:
            current = None
        if current == shipped:
            return target
        if current is None or (current.get("model") or {}).get("source") != "demo":
            raise FileExistsError(f"{target} exists and is not a run of the demo model; move it "
                                  f"away to let the explorer unpack the shipped first run there")
    runs_dir.mkdir(parents=True, exist_ok=True)
    aside = Path(tempfile.mkdtemp(dir=runs_dir, prefix=f".{NAME}-"))
    try:
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(aside, filter="data")
            else:  # Python < 3.11.4: the archive is the package's own
                tar.extractall(aside)
        if target.exists():  # an earlier package's copy
            old = aside / "old"
            target.rename(old)
        try:
            (aside / NAME).rename(target)
        except OSError:  # another process was quicker
            if not (target / store.MANIFEST).is_file() or store.read_manifest(target) != shipped:
                raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
    return target


if __name__ == "__main__":
    write_archive()
