"""Checkpoints on disk: an Orbax directory of arrays plus a JSON file that says how to rebuild.

Layout of a checkpoint directory::

    NAME/
      vit_jax_va.json   {"kind": ..., "format_version": 1, "config": {...}, "library_version": ...}
      state/            Orbax StandardCheckpointer directory (the module's nnx.State)

`save`/`load` handle the ViT; `save_module`/`load_module` are the generic pair that other modules
(the pattern autoencoder) use with their own `kind`. Writes go to a temporary sibling directory
that is renamed into place, so an interrupted save never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import jax
import numpy as np
from flax import nnx

FORMAT_VERSION = 1
META_FILE = "vit_jax_va.json"

if TYPE_CHECKING:
    from vit_jax_va.model import ViT

M = TypeVar("M", bound=nnx.Module)


class CheckpointError(ValueError):
    """A checkpoint (ours or a foreign one) cannot be read; the message names the file and key."""


def _checkpointer():
    """An Orbax checkpointer for this process alone: our checkpoints hold host (numpy) arrays,
    and under `jax.distributed` one process may save or load while the others do something
    else (Orbax would otherwise wait for every process at a barrier)."""
    import orbax.checkpoint as ocp

    process = jax.process_index()
    return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
        primary_host=process, active_processes={process}))


def save_module(module: nnx.Module, path: str | os.PathLike, *, kind: str,
                config: dict[str, Any], overwrite: bool = False) -> Path:
    """Save `module`'s state with Orbax and `config` as JSON under `path`.

    Args:
      module: any NNX module.
      path: target directory; must not exist unless `overwrite`.
      kind: a name checked again on load (e.g. "ViT").
      config: JSON-serialisable dict from which `load_module`'s `build` rebuilds the module.
    Returns the absolute checkpoint path.
    """
    from vit_jax_va import __version__

    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        state = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(module)))
        checkpointer = _checkpointer()
        checkpointer.save(tmp / "state", _str_keys(state))
        checkpointer.wait_until_finished()
        meta = {"kind": kind, "format_version": FORMAT_VERSION, "config": config,
                "library_version": __version__}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path


def read_meta(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """The JSON part of a checkpoint, checked for format version and (optionally) kind."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a vit_jax_va checkpoint: it has no {META_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is not valid JSON: {err}") from None
    for key in ("kind", "format_version", "config"):
        if key not in meta:
            raise CheckpointError(f"{meta_path} has no {key!r} entry")
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format_version {meta['format_version']}; "
                              f"this version of vit_jax_va reads {FORMAT_VERSION}")
    if kind is not None and meta["kind"] != kind:
        raise CheckpointError(f"{path} holds a {meta['kind']!r}, not a {kind!r}")
    return meta


def load_module(path: str | os.PathLike, build: Callable[[dict[str, Any]], M], *,
                kind: str) -> tuple[M, dict[str, Any]]:
    """Rebuild a module saved by `save_module`.

    Args:
      build: config dict -> freshly constructed module of the right shape (its values are
        replaced; construction is traced abstractly, so it costs no initialisation).
    Returns (module, meta).
    """
    path = Path(path).absolute()
    meta = read_meta(path, kind=kind)
    abstract = nnx.eval_shape(lambda: build(meta["config"]))
    graphdef, abstract_state = nnx.split(abstract)
    target = _str_keys(nnx.to_pure_dict(abstract_state))
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), target)
    try:
        restored = _checkpointer().restore(path / "state", target)
    except Exception as err:  # Orbax raises several types; all mean the same to the caller
        raise CheckpointError(f"cannot restore the arrays of {path}: {err}") from err
    # Orbax restores the stored shapes even when the target asks for others: check each array.
    wrong = [f"{jax.tree_util.keystr(key)}: stored {list(got.shape)}, config needs {list(want.shape)}"
             for (key, got), want in zip(jax.tree_util.tree_leaves_with_path(restored),
                                         jax.tree.leaves(target))
             if got.shape != want.shape or got.dtype != want.dtype]
    if wrong:
        raise CheckpointError(f"cannot restore the arrays of {path}: they do not fit its config: "
                              + "; ".join(wrong))
    restored = jax.tree.map(jax.numpy.asarray, restored)
    nnx.replace_by_pure_dict(abstract_state, _int_keys(restored, nnx.to_pure_dict(abstract_state)))
    return nnx.merge(graphdef, abstract_state), meta


def _str_keys(tree: Any) -> Any:
    """Orbax wants string keys; NNX lists give integer keys."""
    if isinstance(tree, dict):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _int_keys(tree: Any, like: Any) -> Any:
    """Undo `_str_keys`, taking the key types from `like`."""
    if isinstance(like, dict):
        return {k: _int_keys(tree[str(k)], v) for k, v in like.items()}
    return tree


def save(model: "ViT", path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Save a `ViT` (Orbax arrays + its `ViTConfig` as JSON); `load` restores it exactly."""
    return save_module(model, path, kind="ViT", config=model.config.to_dict(), overwrite=overwrite)


def load(path: str | os.PathLike) -> "ViT":
    """Load a `ViT` saved by `save` (or by `vit-va convert`)."""
    from vit_jax_va.config import ViTConfig
    from vit_jax_va.model import ViT

    model, _ = load_module(path, lambda c: ViT(ViTConfig.from_dict(c), rngs=nnx.Rngs(0)), kind="ViT")
    return model


def weights_hash(module: nnx.Module) -> str:
    """SHA-256 over every array of the module's state, in path order (names a model's weights)."""
    import hashlib

    digest = hashlib.sha256()
    for path, value in sorted(nnx.to_flat_state(nnx.state(module)), key=lambda kv: str(kv[0])):
        array = np.asarray(value.get_value() if hasattr(value, "get_value") else value)
        digest.update(".".join(map(str, path)).encode())
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def model_identity(model) -> dict:
    """What names a model, as a run records it: its config (as JSON stores it: tuples as lists)
    and `weights_hash`. Both: two checkpoints of the same arrays under different configs (say 3
    heads read as 6) are different models."""
    return {"config": json.loads(json.dumps(model.config.to_dict())), "weights_sha256": weights_hash(model)}


def identity_differences(recorded: dict, model) -> list[str]:
    """How `model` differs from the identity a run recorded (`model_identity`): the config keys
    that differ (`key: recorded -> now`) and whether the weights do; empty if it is that model."""
    now = model_identity(model)
    config = recorded.get("config") or {}
    changes = [f"{key}: {config.get(key)!r} -> {value!r}" for key, value in now["config"].items()
               if key in config and config[key] != value]
    if recorded.get("weights_sha256") and recorded["weights_sha256"] != now["weights_sha256"]:
        changes.append("other weights")
    return changes
