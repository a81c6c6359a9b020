"""timm's names and layouts <-> ours: one function maps names, one transforms values.

Our parameter names mirror timm's, except that Flax calls a linear or conv weight `kernel`
(stored transposed: `[in, out]`, conv `[kh, kw, in, out]`) and a LayerNorm weight `scale`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def timm_key(path: tuple[Any, ...]) -> str:
    """Our parameter path -> timm state-dict key, e.g. ('blocks', 0, 'attn', 'qkv', 'kernel')
    -> 'blocks.0.attn.qkv.weight'."""
    *parents, leaf = (str(p) for p in path)
    return ".".join([*parents, {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])


def to_ours(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    """A timm tensor -> our layout (torch linear `[out, in]` -> `[in, out]`; conv
    `[out, in, kh, kw]` -> `[kh, kw, in, out]`)."""
    if path[-1] == "kernel":
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    return value


def to_torch_layout(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    """Inverse of `to_ours`."""
    if path[-1] == "kernel":
        return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    return value


def timm_layout(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The timm shape of our parameter at `path` with our `shape`."""
    return to_torch_layout(path, np.empty(shape, np.uint8)).shape


def from_family_names(state_dict: Mapping[str, np.ndarray], swiglu: bool = False) -> dict[str, np.ndarray]:
    """timm `Beit` and `Eva` keys -> the `VisionTransformer` keys ours mirror; other keys pass.

    - `blocks.i.gamma_1`/`gamma_2` -> `ls1.gamma`/`ls2.gamma`;
    - `VisionTransformerRelPos`'s `attn.rel_pos.relative_position_bias_table` -> BEiT's place;
    - `attn.q_bias` and `attn.v_bias` -> one `attn.qkv.bias` with a zero key part;
    - Eva's separate `attn.q_proj`/`k_proj`/`v_proj` -> one `attn.qkv` (the key has no bias);
    - with `swiglu`, a packed `mlp.fc1` (`SwiGLUPacked`: gate first) -> `mlp.fc1_g`, `mlp.fc1_x`.
    """
    out = {}
    for key, value in state_dict.items():
        stem, _, leaf = key.rpartition(".")
        if key.endswith(".attn.rel_pos.relative_position_bias_table"):  # VisionTransformerRelPos
            out[key.replace(".rel_pos.", ".")] = value
        elif leaf in ("gamma_1", "gamma_2"):
            out[f"{stem}.ls{leaf[-1]}.gamma"] = value
        elif key.endswith(".attn.q_bias"):
            v_bias = state_dict.get(stem + ".v_bias")
            out[stem + ".qkv.bias"] = (value if v_bias is None else
                                       np.concatenate([value, np.zeros_like(value), v_bias]))
        elif key.endswith(".attn.q_proj.weight"):
            attn = stem[:-len(".q_proj")]
            out[attn + ".qkv.weight"] = np.concatenate(
                [state_dict[f"{attn}.{p}_proj.weight"] for p in "qkv"], axis=0)
            if attn + ".q_proj.bias" in state_dict:
                q_bias = state_dict[attn + ".q_proj.bias"]
                out[attn + ".qkv.bias"] = np.concatenate(
                    [q_bias, state_dict.get(attn + ".k_proj.bias", np.zeros_like(q_bias)),
                     state_dict[attn + ".v_proj.bias"]])
        elif swiglu and key.endswith(".mlp.fc1." + leaf) and leaf in ("weight", "bias"):
            gate, value_part = np.split(value, 2, axis=0)
            out[f"{stem[:-len('fc1')]}fc1_g.{leaf}"] = gate
            out[f"{stem[:-len('fc1')]}fc1_x.{leaf}"] = value_part
        elif not (key.endswith(".attn.v_bias") or ".attn.k_proj." in key or ".attn.v_proj." in key
                  or ".attn.q_proj." in key):
            out[key] = value
    return out


def to_family_names(state_dict: Mapping[str, np.ndarray], family: str,
                    packed_mlp: bool = False) -> dict[str, np.ndarray]:
    """Inverse of `from_family_names` for `family` 'beit' or 'eva' (fused `qkv`; with
    `packed_mlp`, Eva's `SwiGLUPacked` `mlp.fc1`). A key bias, which neither has, must be zero."""
    out = {}
    for key, value in state_dict.items():
        stem, _, leaf = key.rpartition(".")
        if key.endswith((".ls1.gamma", ".ls2.gamma")):
            out[f"{stem[:-len('.ls1')]}.gamma_{stem[-1]}"] = value
        elif key.endswith(".attn.qkv.bias"):
            q_bias, k_bias, v_bias = np.split(value, 3)
            if np.any(k_bias != 0):
                raise ValueError(f"{key}: a nonzero key bias, which timm's {family.title()} does not have")
            attn = stem[:-len(".qkv")]
            out[attn + ".q_bias"], out[attn + ".v_bias"] = q_bias, v_bias
        elif packed_mlp and key.endswith(".mlp.fc1_g." + leaf):
            mlp = stem[:-len(".fc1_g")]
            out[f"{mlp}.fc1.{leaf}"] = np.concatenate([value, state_dict[f"{mlp}.fc1_x.{leaf}"]], axis=0)
        elif not (packed_mlp and ".mlp.fc1_x." in key):
            out[key] = value
    return out
