"""What a run is, so that a run is resumed only with what it was started with.

A run's identity (the manifest's `schema_version`, `model`, `data`, `options` and `images`) is
compared key by key with the sweep given now; `differences` names what changed. Images are
identified by id and by `data.pixel_digest` of the decoded pixels (`inputs.json`), so that a
changed, removed or added file is named, not silently analysed under another image's name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
from typing import Any

from vit_jax_va import store


def versions() -> dict[str, str]:
    """The versions of Python and of the packages a run's numbers depend on."""
    out = {"python": platform.python_version()}
    for package in ("vit-jax-va", "jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def inputs_digest(inputs: dict[str, list[str]]) -> str:
    """One SHA-256 over the run's image ids and pixel digests, in order."""
    lines = "".join(f"{i}\t{d}\n" for i, d in zip(inputs["ids"], inputs["pixels_sha256"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def image_changes(before: dict[str, list[str]], now: dict[str, list[str]], shown: int = 5) -> list[str]:
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


def setting_differences(manifest: dict[str, Any], identity: dict[str, Any], key: str) -> list[str]:
    """Where a run's recorded `manifest[key]` differs from the sweep's `identity[key]`."""
    return differences(store.jsonable(manifest.get(key)), store.jsonable(identity[key]), key)


def differences(stored: Any, now: Any, path: str) -> list[str]:
    """Where two JSON values differ, as 'path: stored -> now' lines."""
    if isinstance(stored, dict) and isinstance(now, dict):
        out = []
        for key in sorted(set(stored) | set(now)):
            out += differences(stored.get(key), now.get(key), f"{path}.{key}")
        return out
    if stored != now:
        return [f"{path}: {_brief(stored)} -> {_brief(now)}"]
    return []


def _brief(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def image_refusal(path, manifest: dict[str, Any], images: dict[str, Any],
                  inputs: dict[str, list[str]]) -> str | None:
    """Why the run at `path` (its `manifest`) cannot be resumed on the images given now (their
    `images` identity `{count, sha256}` and `inputs` `{ids, pixels_sha256}`), naming the files
    that changed; None when they are the run's images."""
    recorded = manifest.get("images")
    if recorded == images:
        return None
    if recorded is None:
        if manifest.get("complete"):
            return None  # a finished run of a version that recorded no images: nothing to resume
        return (f"{path} holds an unfinished run of an earlier vit-jax-va, which recorded no "
                f"image digests, so it cannot be told whether its images are the ones given now; "
                f"choose another --out (or delete it)")
    try:
        before = store.read_json(path / store.INPUTS)
    except (OSError, ValueError):
        before = None
    changes = image_changes(before, inputs) if before else [
        f"{recorded.get('count')} images before, {images.get('count')} now"]
    return (f"{path} holds a run of other images than the ones given now: "
            + "; ".join(changes) + ". Its results so far belong to the images it was started on: "
            "restore them and run the same command to resume, or choose another --out")
