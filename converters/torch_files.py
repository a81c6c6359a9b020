"""PyTorch checkpoint files (`.safetensors`, `.pth`/`.pt`/`.bin`/`.ckpt`) -> float32 numpy
state dicts, read without ever unpickling arbitrary objects."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax_va.checkpoint import CheckpointError

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)


def local_file(source: str | os.PathLike) -> Path | None:
    """The checkpoint file `source` names, or None when it is a timm model name."""
    path = Path(source)
    if path.exists():
        return path
    if path.suffix in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES or os.sep in str(source):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    return None


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a timm checkpoint file into a dict of float32 numpy arrays (see `from_timm`)."""
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise CheckpointError(f"{path}: a Google JAX .npz ViT checkpoint is not a timm file; read it with "
                              "converters.from_npz (vit-va convert and vit-va sweep --model read .npz files)")
    if suffix not in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES:
        raise CheckpointError(f"{path}: unknown checkpoint format {suffix!r}; expected one of "
                              f"{TORCH_SUFFIXES + SAFETENSORS_SUFFIXES}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes)")
    try:
        if suffix in SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad header, refused pickle: all unreadable
        raise CheckpointError(f"cannot read {path} (truncated or not a {suffix} checkpoint?): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    if not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
            inner = loaded.get(key)
            if isinstance(inner, Mapping) and inner and all(
                    isinstance(v, torch.Tensor) for v in inner.values()):
                loaded = inner
                break
        else:
            raise CheckpointError(f"{path} is not a state dict of tensors; its top-level keys are "
                                  f"{sorted(map(str, loaded))[:12]}")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return numpy_state_dict(loaded)


def numpy_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            value = value.float() if value.is_floating_point() else value
            value = value.numpy()
        value = np.asarray(value)
        out[key] = value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value
    return out
