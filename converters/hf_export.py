"""`vit_jax_va.ViT` -> Hugging Face `transformers`: the way back of `converters.hf`.

`to_hf` builds the transformers module whose `config_from_hf` is the model's config (anything
the class cannot hold is refused, naming the setting), then fills it from our weights through
the inverse of `converters.hf`'s name map. `save_hf` writes a model directory that
`transformers` (and `converters.from_hf`) load: `config.json`, `model.safetensors` and a
`preprocessor_config.json` with the model's preprocessing. transformers is imported inside.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from converters.hf import FUSED, _eager, _hf_key, _keys
from converters.hf_config import ACTIVATIONS, RESAMPLE, config_from_hf
from converters.timm_config import UnsupportedModelError
from converters.timm_names import to_torch_layout
from vit_jax_va.config import ViTConfig
from vit_jax_va.model import ViT

# ViTConfig.act -> transformers' hidden_act (the first name `converters.hf_config` reads as it).
HIDDEN_ACT = {ours: theirs for theirs, ours in reversed(list(ACTIVATIONS.items()))}
# Fields that are preprocessing or labels, not architecture: not compared with the class's.
NOT_ARCHITECTURE = {"mean", "std", "interpolation", "crop_fraction", "crop_mode", "class_names", "mlp_ratio"}


def hf_architecture(config: ViTConfig) -> str:
    """The transformers class that holds `config`: SigLIP's for attention pooling, CLIP's for a
    pre-norm, DeiT's with teacher for a distillation token, DINOv2's for layer scale, else ViT's."""
    if config.pool == "map":
        return "SiglipVisionModel"
    if config.pre_norm:
        return "CLIPVisionModelWithProjection" if config.num_classes else "CLIPVisionModel"
    if config.distillation_token:
        return "DeiTForImageClassificationWithTeacher"
    if config.layer_scale:
        return "Dinov2WithRegistersModel" if config.num_register_tokens else "Dinov2Model"
    return "ViTForImageClassification" if config.num_classes else "ViTModel"


def to_hf(model: ViT, architecture: str | None = None) -> Any:
    """A transformers module (eval mode, eager attention) that computes what `model` computes.

    Args:
      model: the model.
      architecture: the transformers class name (`converters.hf_config.MODELS`); by default
        `hf_architecture(model.config)`.
    Raises:
      UnsupportedModelError naming every setting the class cannot hold (a rotary embedding, a
      relative position bias, qk-norm, a non-square CLIP input, a DINOv2 classifier, ...).
    `from_hf(to_hf(m))` has `m`'s weights bit for bit. DINOv2 with registers folds the class
    token's position into the class token (`converters.hf`), so its class position comes back
    as zero and the class token as the sum; a CLIP projection must have a zero bias.
    """
    import torch

    config = model.config
    name = architecture or hf_architecture(config)
    module = _empty_module(config, name)
    keys = _keys(module)
    target = module.state_dict()
    flat: dict[str, np.ndarray] = {}
    pool_parts: dict[str, dict[str, np.ndarray]] = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        names = [str(p) for p in path]
        value = to_torch_layout(path, np.asarray(var.get_value(), np.float32))
        key = _hf_key(path, keys)
        if names[0] == "attn_pool" and names[1] in ("q", "kv"):
            pool_parts.setdefault(key, {})[names[1]] = value
        else:
            flat[key] = value
    for key, parts in pool_parts.items():  # SigLIP's in_proj holds our query, then key-value
        flat[key] = np.concatenate([parts["q"], parts["kv"]], axis=0)
    for key in [k for k in flat if f".{FUSED}." in k]:
        stem, leaf = key.rsplit(f".{FUSED}.", 1)
        for part, value in zip(("q_proj", "k_proj", "v_proj"), np.split(flat.pop(key), 3, axis=0)):
            flat[f"{stem}.{part}.{leaf}"] = value
    if config.num_register_tokens:  # the class position was folded into the class token
        pos = flat[keys["pos_embed"]]
        flat[keys["pos_embed"]] = np.concatenate([np.zeros_like(pos[:, :1]), pos], axis=1)
    if keys.get("head") == "visual_projection":
        bias = flat.pop("visual_projection.bias")
        if np.any(bias != 0):
            raise UnsupportedModelError(f"{name}: a head bias (CLIP's projection has none)")
    unexpected = sorted(set(flat) - set(target))
    missing = sorted(set(target) - set(flat) - {keys["mask_token"]})
    if unexpected or missing:
        raise AssertionError(f"name map out of step with {name}: missing {missing}, unexpected {unexpected}")
    state = {k: torch.from_numpy(np.array(v.reshape(target[k].shape))) for k, v in flat.items()}
    module.load_state_dict(state, strict=False)
    return module.eval()


def _empty_module(config: ViTConfig, name: str) -> Any:
    """A transformers `name` module built for `config`, checked to hold every architecture
    setting of it (`config_from_hf` of the module equals `config` on those)."""
    import transformers

    from converters.hf_config import MODELS

    if name not in MODELS:
        raise UnsupportedModelError(f"{name}: not a transformers class that converters writes "
                                    f"(these are: {', '.join(MODELS)})")
    family = MODELS[name][0]
    if config.act not in HIDDEN_ACT:
        raise UnsupportedModelError(f"{name}: act={config.act!r}")
    if config.swiglu and family != "dinov2":
        raise UnsupportedModelError(f"{name}: swiglu=True (only DINOv2 has a SwiGLU MLP in transformers)")
    common = dict(hidden_size=config.width, num_hidden_layers=config.depth, num_attention_heads=config.num_heads,
                  num_channels=config.in_channels, patch_size=config.patch_size[0],
                  hidden_act=HIDDEN_ACT[config.act], layer_norm_eps=config.layer_norm_eps)
    if config.patch_size[0] != config.patch_size[1]:
        raise UnsupportedModelError(f"{name}: a non-square patch {config.patch_size}")
    height, width = config.image_size
    if family in ("clip", "siglip", "dinov2") and height != width:
        raise UnsupportedModelError(f"{name}: a non-square input {config.image_size} (square only)")
    image_size = height if height == width else (height, width)
    if family == "dinov2":
        # transformers' DINOv2 takes a whole mlp_ratio; with SwiGLU the hidden units are
        # (int(int(width * ratio) * 2 / 3) + 7) // 8 * 8.
        def units(r: int) -> int:
            plain = int(config.width * r)
            return (int(plain * 2 / 3) + 7) // 8 * 8 if config.swiglu else plain
        ratio = next((r for r in range(1, 17) if units(r) == config.mlp_hidden), None)
        if ratio is None:
            raise UnsupportedModelError(f"{name}: an MLP of {config.mlp_hidden} units for width {config.width} "
                                        "(transformers' DINOv2 takes a whole mlp_ratio)")
        settings = dict(common, image_size=image_size, mlp_ratio=ratio, qkv_bias=config.qkv_bias,
                        use_swiglu_ffn=config.swiglu, layerscale_value=1.0)
        if name == "Dinov2WithRegistersModel":
            settings["num_register_tokens"] = config.num_register_tokens
        hf_config = getattr(transformers, name.replace("Model", "Config"))(**settings)
    elif family == "clip":
        hf_config = transformers.CLIPVisionConfig(**common, image_size=image_size, intermediate_size=config.mlp_hidden,
                                                  projection_dim=config.num_classes or 512)
    elif family == "siglip":
        hf_config = transformers.SiglipVisionConfig(**common, image_size=image_size,
                                                    intermediate_size=config.mlp_hidden, vision_use_head=True)
    else:
        cls = transformers.DeiTConfig if family == "deit" else transformers.ViTConfig
        labels = ({"id2label": dict(enumerate(config.class_names))} if config.class_names
                  else {"num_labels": config.num_classes})
        hf_config = cls(**common, image_size=image_size, intermediate_size=config.mlp_hidden,
                        qkv_bias=config.qkv_bias, **(labels if config.num_classes else {}))
    cls = getattr(transformers, name)
    module = cls(hf_config, add_pooling_layer=False) if name == "ViTModel" else cls(hf_config)
    _eager(module)
    theirs = config_from_hf(module)
    differ = [f"{f.name}={getattr(config, f.name)!r} (the class holds {getattr(theirs, f.name)!r})"
              for f in dataclasses.fields(ViTConfig)
              if f.name not in NOT_ARCHITECTURE and getattr(config, f.name) != getattr(theirs, f.name)]
    if config.mlp_hidden != theirs.mlp_hidden:
        differ.append(f"an MLP of {config.mlp_hidden} units (the class holds {theirs.mlp_hidden})")
    if differ:
        raise UnsupportedModelError(f"{name} cannot hold this model: " + "; ".join(differ))
    return module


def save_hf(model: ViT, folder: str | os.PathLike, architecture: str | None = None) -> Path:
    """Write `to_hf(model, architecture)` as a transformers model directory: `config.json`,
    `model.safetensors` and `preprocessor_config.json` (mean, std, resampling; a resize of the
    shorter side then a centre crop, or a squash). Returns the folder."""
    folder = Path(folder)
    module = to_hf(model, architecture)
    module.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(image_processor(model.config), indent=2))
    return folder


def image_processor(config: ViTConfig) -> dict[str, Any]:
    """A transformers image-processor config for `config`'s preprocessing (what
    `converters.hf_config.preprocessing` reads back): CLIP's processor for resize-then-crop,
    ViT's for a squash."""
    height, width = config.image_size
    resample = {v: k for k, v in RESAMPLE.items()}[config.interpolation]
    out: dict[str, Any] = {"image_mean": list(config.mean), "image_std": list(config.std), "resample": resample,
                           "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True}
    if config.crop_mode == "center":
        out.update(image_processor_type="CLIPImageProcessor", do_center_crop=True,
                   size={"shortest_edge": round(min(height, width) / config.crop_fraction)},
                   crop_size={"height": height, "width": width}, do_convert_rgb=config.in_channels == 3)
    else:
        out.update(image_processor_type="ViTImageProcessor", size={"height": height, "width": width})
    return out
