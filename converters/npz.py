"""Google's JAX ViT checkpoints (`.npz`) -> `vit_jax_va.ViT`.

Two layouts: the original `vision_transformer` one (`Transformer/encoderblock_{i}/
MultiHeadDotProductAttention_1/...`, `cls`, `head`) and big_vision's (a `params/` prefix, the
blocks stacked along a leading layer axis under `Transformer/encoderblock/`, `gap`, `map`
(`MAPHead_0`) or `tok` pooling). The architecture is read off the arrays' shapes; what they do
not say (a non-square grid's image size) is asked for by name. The arrays are rearranged into
timm's names and layouts and loaded strictly by `converters.timm`, whose name map is ours.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.config import ViTConfig

PREFIXES = ("params/img/", "params/", "opt/target/", "")


def from_npz(path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
             trained_size: int | tuple[int, int] | None = None, act: str = "gelu_tanh", **settings: Any):
    """Convert a Google `.npz` ViT checkpoint to a `vit_jax_va.ViT`.

    Args:
      path: the `.npz` file.
      image_size: run the model at this size (pixels; an int: square): the position embedding
        is resampled by timm (`converters.at_image_size`).
      trained_size: the size the checkpoint was trained at. Needed only when the position
        embedding's grid is not square.
      act: the MLP activation. Google's JAX ViTs call flax's `nn.gelu`, the tanh approximation
        (the default here); timm reads these checkpoints into exact-GELU models ("gelu").
      **settings: other `ViTConfig` fields (preprocessing: `mean`, `std`, ...; Google's ViTs
        scale pixels to -1..1: mean and std 0.5, the default here).
    """
    from converters.timm import from_timm

    arrays = read_npz(path)
    config = config_from_npz(arrays, image_size=trained_size, act=act, origin=str(path), **settings)
    return from_timm(timm_state_dict(arrays, config, origin=str(path)), config=config, image_size=image_size)


def timm_reference(path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
                   trained_size: int | tuple[int, int] | None = None, act: str = "gelu_tanh") -> Any:
    """The timm model that timm's own npz loader (`vision_transformer._load_weights`) makes of
    the file, for the architecture `config_from_npz` reads (set to `image_size` if given): the
    reference that `vit-va convert` checks a conversion against."""
    from timm.models.vision_transformer import _load_weights

    from converters.timm import at_image_size
    from converters.timm_write import create_timm_model

    config = config_from_npz(read_npz(path), image_size=trained_size, act=act, origin=str(path))
    module = create_timm_model(config)
    _load_weights(module, str(path))
    return at_image_size(module, image_size) if image_size is not None else module.eval()


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an `.npz` file (never unpickled), or `CheckpointError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable .npz checkpoint ({err})") from None


def _layout(arrays: dict[str, np.ndarray], origin: str) -> tuple[str, bool, bool]:
    """(key prefix, big_vision names, blocks stacked along a leading layer axis)."""
    prefix = next((p for p in PREFIXES if f"{p}embedding/kernel" in arrays), None)
    if prefix is None:
        raise CheckpointError(f"{origin}: no embedding/kernel (nor params/embedding/kernel): not a Google "
                              "ViT checkpoint")
    stacked = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale" in arrays
    big_vision = prefix.startswith("params/") or f"{prefix}pos_embedding" in arrays or stacked
    return prefix, big_vision, stacked


def config_from_npz(arrays: dict[str, np.ndarray], *, image_size: int | tuple[int, int] | None = None,
                    act: str = "gelu_tanh", origin: str = "the checkpoint", **settings: Any) -> ViTConfig:
    """The `ViTConfig` the arrays describe (width, depth, heads, patch, grid, classes,
    pooling, class token)."""
    prefix, big_vision, stacked = _layout(arrays, origin)
    kernel = arrays[f"{prefix}embedding/kernel"]  # [ph, pw, in, C]
    if kernel.ndim != 4:
        raise CheckpointError(f"{origin}: embedding/kernel has shape {list(kernel.shape)}, not "
                              "[patch, patch, channels, width]")
    width = int(kernel.shape[-1])
    block = f"{prefix}Transformer/encoderblock/" if stacked else f"{prefix}Transformer/encoderblock_0/"
    attention = f"{block}MultiHeadDotProductAttention_{0 if big_vision else 1}/"
    mlp = f"{block}MlpBlock_{0 if big_vision else 3}/"
    query = _get(arrays, f"{attention}query/kernel", origin)
    if stacked:
        depth = int(query.shape[0])
    else:
        depth = sum(1 for k in arrays if k.startswith(f"{prefix}Transformer/encoderblock_") and
                    k.endswith("/LayerNorm_0/scale"))
    heads = int(query.shape[-2])
    hidden = int(_get(arrays, f"{mlp}Dense_0/kernel", origin).shape[-1])
    class_token = f"{prefix}cls" in arrays
    pos = _get(arrays, f"{prefix}pos_embedding" if big_vision and f"{prefix}pos_embedding" in arrays
               else f"{prefix}Transformer/posembed_input/pos_embedding", origin)
    patches = int(pos.shape[1]) - int(class_token)
    patch = (int(kernel.shape[0]), int(kernel.shape[1]))
    if image_size is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise CheckpointError(f"{origin}: the position embedding has {patches} patch positions, not a "
                                  "square grid: pass image_size=(height, width)")
        image_size = (side * patch[0], side * patch[1])
    if f"{prefix}MAPHead_0/probe" in arrays:
        pool = "map"
    elif class_token:
        pool = "token"
    else:
        pool = "avg"
    head = arrays.get(f"{prefix}head/kernel")
    if f"{prefix}pre_logits/kernel" in arrays:
        raise CheckpointError(f"{origin}: a pre_logits (representation) layer is not supported by vit_jax_va.ViT")
    defaults = dict(mean=(0.5,) * int(kernel.shape[2]), std=(0.5,) * int(kernel.shape[2]),
                    interpolation="bilinear", crop_fraction=1.0)
    return ViTConfig(image_size=image_size, patch_size=patch, in_channels=int(kernel.shape[2]), width=width,
                     depth=depth, num_heads=heads, mlp_ratio=hidden / width, class_token=class_token,
                     pool=pool, act=act, num_classes=0 if head is None else int(head.shape[-1]),
                     **{**defaults, **settings})


def _get(arrays: dict[str, np.ndarray], key: str, origin: str) -> np.ndarray:
    if key not in arrays:
        raise CheckpointError(f"{origin}: missing array {key}")
    return arrays[key]


def timm_state_dict(arrays: dict[str, np.ndarray], config: ViTConfig, origin: str = "the checkpoint"
                    ) -> dict[str, np.ndarray]:
    """The arrays in timm's names and layouts (torch `[out, in]` weights), for `config`."""
    prefix, big_vision, stacked = _layout(arrays, origin)
    get = lambda key: _get(arrays, prefix + key, origin)  # noqa: E731
    width = config.width
    out = {"patch_embed.proj.weight": get("embedding/kernel").transpose(3, 2, 0, 1),
           "patch_embed.proj.bias": get("embedding/bias"),
           "pos_embed": get("pos_embedding" if big_vision and f"{prefix}pos_embedding" in arrays
                            else "Transformer/posembed_input/pos_embedding").reshape(1, -1, width)}
    if config.class_token:
        out["cls_token"] = get("cls").reshape(1, 1, width)
    attention, norm2, mlp = ((0, 1, 0) if big_vision else (1, 2, 3))
    for i in range(config.depth):
        block = "Transformer/encoderblock/" if stacked else f"Transformer/encoderblock_{i}/"
        layer = (lambda key, b=block: get(b + key)[i]) if stacked else (lambda key, b=block: get(b + key))
        mha = f"MultiHeadDotProductAttention_{attention}/"
        ours = f"blocks.{i}."
        out[ours + "norm1.weight"], out[ours + "norm1.bias"] = layer("LayerNorm_0/scale"), layer("LayerNorm_0/bias")
        out[ours + "attn.qkv.weight"] = np.concatenate(
            [layer(f"{mha}{n}/kernel").reshape(width, -1).T for n in ("query", "key", "value")])
        out[ours + "attn.qkv.bias"] = np.concatenate([layer(f"{mha}{n}/bias").reshape(-1) for n in ("query", "key", "value")])
        out[ours + "attn.proj.weight"] = layer(f"{mha}out/kernel").reshape(-1, width).T
        out[ours + "attn.proj.bias"] = layer(f"{mha}out/bias")
        out[ours + "norm2.weight"] = layer(f"LayerNorm_{norm2}/scale")
        out[ours + "norm2.bias"] = layer(f"LayerNorm_{norm2}/bias")
        for r in range(2):
            out[ours + f"mlp.fc{r + 1}.weight"] = layer(f"MlpBlock_{mlp}/Dense_{r}/kernel").T
            out[ours + f"mlp.fc{r + 1}.bias"] = layer(f"MlpBlock_{mlp}/Dense_{r}/bias")
    out["norm.weight"], out["norm.bias"] = get("Transformer/encoder_norm/scale"), get("Transformer/encoder_norm/bias")
    if config.num_classes:
        out["head.weight"], out["head.bias"] = get("head/kernel").T, get("head/bias")
    if config.pool == "map":
        pool = "MAPHead_0/"
        mha = pool + "MultiHeadDotProductAttention_0/"
        out["attn_pool.latent"] = get(pool + "probe").reshape(1, 1, width)
        out["attn_pool.q.weight"] = get(mha + "query/kernel").reshape(width, -1).T
        out["attn_pool.q.bias"] = get(mha + "query/bias").reshape(-1)
        out["attn_pool.kv.weight"] = np.concatenate([get(f"{mha}{n}/kernel").reshape(width, -1).T for n in ("key", "value")])
        out["attn_pool.kv.bias"] = np.concatenate([get(f"{mha}{n}/bias").reshape(-1) for n in ("key", "value")])
        out["attn_pool.proj.weight"] = get(mha + "out/kernel").reshape(-1, width).T
        out["attn_pool.proj.bias"] = get(mha + "out/bias")
        out["attn_pool.norm.weight"], out["attn_pool.norm.bias"] = get(pool + "LayerNorm_0/scale"), get(pool + "LayerNorm_0/bias")
        for r in range(2):
            out[f"attn_pool.mlp.fc{r + 1}.weight"] = get(f"{pool}MlpBlock_0/Dense_{r}/kernel").T
            out[f"attn_pool.mlp.fc{r + 1}.bias"] = get(f"{pool}MlpBlock_0/Dense_{r}/bias")
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}
