"""Hugging Face `transformers` ViT, distilled DeiT, DINOv2 and the CLIP and SigLIP vision
towers -> `vit_jax_va.ViT`.

The transformers module is the source (a module in memory, or a model directory loaded by
transformers itself, so that every checkpoint naming transformers reads is read). Its state
dict is renamed onto ours (`hf_key`), with the separate query, key and value projections fused
into our one `qkv` projection, then loaded strictly (`converters.strict`). Architecture and
preprocessing come from `converters.hf_config`. transformers is imported inside the functions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from converters.hf_config import config_from_hf, family_of
from converters.strict import strict_load
from converters.timm_names import timm_layout, to_ours
from converters.torch_files import numpy_state_dict
from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.model import ViT

# The key our fused projection is read from: the three HF projections, concatenated.
FUSED = "qkv"


def from_hf(source: Any, *, image_size: int | tuple[int, int] | None = None) -> ViT:
    """Convert a transformers `ViTModel`/`ViTForImageClassification`,
    `DeiTForImageClassificationWithTeacher`, `Dinov2Model`, `Dinov2WithRegistersModel`,
    `CLIPVisionModel`/
    `CLIPVisionModelWithProjection` (the projection is the head: `image_embeds`) or
    `SiglipVisionModel` (attention pooling) to a `vit_jax_va.ViT`.

    Args:
      source: the module, or a model directory (`config.json` and weights; its
        `preprocessor_config.json` gives mean, std, resize and crop).
      image_size: run at this size in pixels (an int: square) instead of the config's: the
        position embedding is interpolated by the module's own `interpolate_pos_encoding`, so
        the result computes what transformers computes for that size with
        `interpolate_pos_encoding=True` (DINOv2 always interpolates).
    A model without a classifier returns its pooled features (transformers' `pooler_output`
    for DINOv2, CLIP and SigLIP): the class token after the final LayerNorm, or SigLIP's
    attention pool (a `ViTModel`'s tanh `pooler`, if it has one, is not part of the converted
    model).
    """
    module, folder = hf_module(source)
    config = config_from_hf(module, folder)
    state_dict = hf_state_dict(module)
    keys = _keys(module)
    pos = state_dict[keys["pos_embed"]]
    positioned_prefix = pos.reshape(-1, config.width).shape[0] - config.num_patches  # tokens before the patches
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
        config = config.replace(image_size=size)
        resized = _interpolated_pos_embed(module, config, positioned_prefix)
        state_dict[keys["pos_embed"]] = resized.reshape(-1, config.width) if pos.ndim == 2 else resized
    if config.num_register_tokens:  # DINOv2 with registers: the class position into the class token
        pos = state_dict[keys["pos_embed"]]
        state_dict[keys["cls_token"]] = state_dict[keys["cls_token"]] + pos[:, :1]
        state_dict[keys["pos_embed"]] = pos[:, 1:]
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    return strict_load(state_dict, config, key_of=lambda path: _hf_key(path, keys), to_ours=_to_ours,
                       source_layout=_source_layout(shapes, keys),
                       origin=str(folder) if folder else f"the {type(module).__name__}")


def hf_module(source: Any) -> tuple[Any, Path | None]:
    """(the transformers module in eval mode with eager attention, its directory or None)."""
    import torch.nn as nn

    if isinstance(source, nn.Module):
        family_of(source)
        _eager(source)
        return source.eval(), None
    if isinstance(source, str) and source.startswith("hf:"):
        return _hub(source[3:])
    folder = Path(os.fspath(source))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model directory at {folder} (it needs config.json and "
                                "model.safetensors)")
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(folder)
        architecture = (config.architectures or [None])[0]
        cls = getattr(transformers, architecture, None) if architecture else transformers.AutoModel
        if cls is None:
            raise CheckpointError(f"{folder}: transformers has no class {architecture!r} (config.json)")
        module = cls.from_pretrained(folder, attn_implementation="eager")
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{folder}: transformers cannot load it ({err})") from None
    family_of(module)
    return module.eval(), folder


def _hub(name: str):
    raise CheckpointError(f"hf:{name}: downloading from the Hugging Face hub is not done here; download "
                          f"the model directory (config.json, model.safetensors, preprocessor_config.json) "
                          "where there is network access and pass its path")


def _eager(module: Any) -> None:
    if getattr(module.config, "_attn_implementation", "eager") != "eager":
        module.set_attn_implementation("eager")


def hf_state_dict(module: Any) -> dict[str, np.ndarray]:
    """The module's state dict as numpy, every block's query, key and value projections fused
    into one `...attention.qkv` weight and bias (in that order); DINOv2's `mask_token` (read
    only when pre-training masks patches) and a `ViTModel`'s tanh `pooler` left out."""
    keys = _keys(module)
    flat = {k: v for k, v in numpy_state_dict(module.state_dict()).items()
            if k != keys["mask_token"] and not k.startswith(keys["pooler"])}
    if keys.get("head") == "visual_projection":  # CLIP's projection has no bias: ours is zero
        flat["visual_projection.bias"] = np.zeros(flat["visual_projection.weight"].shape[0], np.float32)
    for key in [k for k in flat if k.endswith(".q_proj.weight") or k.endswith(".q_proj.bias")]:
        stem, leaf = key.rsplit(".q_proj.", 1)
        parts = [f"{stem}.{p}.{leaf}" for p in ("q_proj", "k_proj", "v_proj")]
        if all(p in flat for p in parts):
            flat[f"{stem}.{FUSED}.{leaf}"] = np.concatenate([flat.pop(p) for p in parts], axis=0)
    return flat


def _keys(module: Any) -> dict[str, str]:
    """The HF keys (or key stems) of the parts of a module whose names differ by family."""
    family, backbone, heads = family_of(module)
    p = f"{backbone}." if backbone else ""
    if family in ("clip", "siglip"):
        keys = {"cls_token": f"{p}embeddings.class_embedding", "pos_embed": f"{p}embeddings.position_embedding.weight",
                "patch_embed": f"{p}embeddings.patch_embedding", "norm_pre": f"{p}pre_layrnorm",
                "blocks": f"{p}encoder.layers", "norm": f"{p}post_layernorm", "norm1": "layer_norm1",
                "norm2": "layer_norm2", "attn": "self_attn", "proj": "out_proj", "attn_pool": f"{p}head"}
    else:
        keys = {"cls_token": f"{p}embeddings.cls_token", "dist_token": f"{p}embeddings.distillation_token",
                "reg_token": f"{p}embeddings.register_tokens", "pos_embed": f"{p}embeddings.position_embeddings",
                "patch_embed": f"{p}embeddings.patch_embeddings.projection", "norm": f"{p}layernorm",
                "blocks": f"{p}encoder.layer" if family == "dinov2" else f"{p}layers",
                "norm1": "norm1" if family == "dinov2" else "layernorm_before",
                "norm2": "norm2" if family == "dinov2" else "layernorm_after", "attn": "attention", "proj": "o_proj"}
    keys.update(mask_token=f"{p}embeddings.mask_token", pooler=f"{p}pooler.")
    if getattr(module.config, "use_swiglu_ffn", False):  # DINOv2 giant's SwiGLU
        keys.update(fc1_g="gate_proj", fc1_x="up_proj", fc2="down_proj")
    if heads:
        keys["head"] = heads[0]
        if len(heads) > 1:
            keys["head_dist"] = heads[1]
    return keys


# Our attention pool's parts -> SigLIP's head (`in_proj_*` holds q, k, v: ours q, then kv).
POOL_PARTS = {"latent": "probe", "q": "attention.in_proj", "kv": "attention.in_proj",
              "proj": "attention.out_proj", "norm": "layernorm", "mlp": "mlp"}


def _hf_key(path: tuple[Any, ...], keys: dict[str, str]) -> str:
    """Our parameter path -> the HF key (with the fused `qkv`)."""
    *parents, leaf = (str(p) for p in path)
    leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    first = parents[0] if parents else leaf
    if first in ("cls_token", "dist_token", "reg_token", "pos_embed"):
        return keys[first]
    if first in ("patch_embed", "norm_pre", "norm", "head", "head_dist"):
        return f"{keys[first]}.{leaf}"
    if first == "attn_pool":
        part = parents[1] if len(parents) > 1 else leaf
        if part == "latent":
            return f"{keys['attn_pool']}.probe"
        if part in ("q", "kv"):
            return f"{keys['attn_pool']}.attention.in_proj_{leaf}"
        return ".".join([keys["attn_pool"], POOL_PARTS[part], *parents[2:], leaf])
    if first == "blocks":
        _, layer, *inner = parents
        names = {"norm1": keys["norm1"], "norm2": keys["norm2"], "ls1": "layer_scale1", "ls2": "layer_scale2",
                 "attn": keys["attn"], "proj": keys["proj"], **{k: keys[k] for k in ("fc1_g", "fc1_x", "fc2") if k in keys}}
        inner = [names.get(n, n) for n in inner]
        if inner and inner[-1] in ("layer_scale1", "layer_scale2"):
            leaf = "lambda1"
        return ".".join([keys["blocks"], layer, *inner, leaf])
    return ".".join([*parents, leaf])


def _to_ours(path: tuple[Any, ...], value: np.ndarray) -> np.ndarray:
    """An HF array -> our layout: CLIP's class embedding `[C]` and CLIP/SigLIP's position
    embedding table `[T, C]` get their batch axes; SigLIP's `in_proj` is split into our query
    `[:C]` and key-value `[C:]` projections; weights are transposed as timm's are."""
    names = [str(p) for p in path]
    if names[0] == "cls_token" and value.ndim == 1:
        return value.reshape(1, 1, -1)
    if names[0] == "pos_embed" and value.ndim == 2:
        return value[None]
    if names[0] == "attn_pool" and names[1] in ("q", "kv"):
        width = value.shape[-1] if value.ndim == 2 else value.shape[0] // 3
        value = value[:width] if names[1] == "q" else value[width:]
    return to_ours(path, value)


def _source_layout(shapes: dict[str, tuple[int, ...]], keys: dict[str, str]):
    """(our path, our shape) -> the shape the HF key holds (for strict loading's messages)."""
    def layout(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        names = [str(p) for p in path]
        key = _hf_key(path, keys)
        if names[0] in ("cls_token", "pos_embed") and key in shapes and len(shapes[key]) < len(shape):
            return tuple(shape[-len(shapes[key]):])
        if names[0] == "attn_pool" and names[1] in ("q", "kv"):
            if names[-1] == "kernel":  # ours [C, C] or [C, 2C]
                return (3 * shape[0], shape[0])
            return (3 * shape[0] // (1 if names[1] == "q" else 2),)
        return timm_layout(path, shape)
    return layout


def _interpolated_pos_embed(module: Any, config, positioned_prefix: int) -> np.ndarray:
    """The module's position embedding for `config.image_size`, interpolated by its own
    `embeddings.interpolate_pos_encoding` (`positioned_prefix`: the tokens before the patches
    that have a position)."""
    import torch

    _, backbone, _ = family_of(module)
    embeddings = (getattr(module, backbone) if backbone else module).embeddings
    height, width = config.image_size
    tokens = positioned_prefix + config.num_patches
    with torch.no_grad():
        dummy = torch.zeros(1, tokens, config.width)
        pos = embeddings.interpolate_pos_encoding(dummy, height, width)
    return pos.detach().float().numpy()


def hf_forward(module: Any, images_nchw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Run a transformers module (eager attention) on images at any size: (logits, or the pooled
    features of a model without a classifier, `[B, K]`; every layer's attention `[B, L, H, T,
    T]`), as numpy."""
    import torch

    _eager(module)
    family, _, heads = family_of(module)
    kwargs = {} if family == "dinov2" else {"interpolate_pos_encoding": True}
    with torch.inference_mode():
        out = module.eval()(pixel_values=images_nchw, output_attentions=True, **kwargs)
    if family == "clip" and heads:
        logits = out.image_embeds
    elif heads:
        logits = out.logits
    elif family in ("dinov2", "clip", "siglip"):
        logits = out.pooler_output
    else:
        logits = out.last_hidden_state[:, 0]
    return logits.numpy(), torch.stack(out.attentions, dim=1).numpy()
