"""Hugging Face `transformers` vision models (ViT, distilled DeiT, DINOv2, the CLIP and SigLIP
vision towers) -> `ViTConfig`: the architecture read off the
module's config (every setting handled or refused by name), the preprocessing off the
checkpoint's `preprocessor_config.json` when there is one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converters.timm_config import UnsupportedModelError
from vit_jax_va.config import IMAGENET_MEAN, IMAGENET_STD, ViTConfig

# transformers model class -> (family, the attribute holding the backbone or "" for the model
# itself, the classifier attribute(s) or ()).
MODELS = {
    "ViTModel": ("vit", "", ()),
    "ViTForImageClassification": ("vit", "vit", ("classifier",)),
    "DeiTForImageClassificationWithTeacher": ("deit", "deit", ("cls_classifier", "distillation_classifier")),
    "Dinov2Model": ("dinov2", "", ()),
    "Dinov2WithRegistersModel": ("dinov2", "", ()),
    "CLIPVisionModel": ("clip", "", ()),
    "CLIPVisionModelWithProjection": ("clip", "vision_model", ("visual_projection",)),
    "SiglipVisionModel": ("siglip", "", ()),
}
# Classes refused, and why (named in the error).
REFUSED = {
    "DeiTModel": "features from the class token alone while a distillation token is there",
    "DeiTForImageClassification": "a classifier on the class token alone while a distillation token is there",
    "Dinov2ForImageClassification": "a classifier on the class token and the mean patch token concatenated",
}
# `hidden_act` -> `ViTConfig.act`.
ACTIVATIONS = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "quick_gelu": "quick_gelu"}
# PIL's resampling numbers (`resample` of an image processor) -> `ViTConfig.interpolation`.
RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def family_of(module: Any) -> tuple[str, str, tuple[str, ...]]:
    """(family, backbone attribute, classifier attributes) of a transformers module, or
    `UnsupportedModelError` naming its class and the classes that are read."""
    name = type(module).__name__
    if name in REFUSED:
        raise UnsupportedModelError(f"{name}: {REFUSED[name]} is not supported by vit_jax_va.ViT")
    if name not in MODELS:
        raise UnsupportedModelError(f"{name}: not a transformers model that vit_jax_va reads "
                                    f"(these are: {', '.join(MODELS)})")
    return MODELS[name]


def config_from_hf(module: Any, folder: str | Path | None = None) -> ViTConfig:
    """The `ViTConfig` of a transformers ViT, DeiT, DINOv2, CLIP or SigLIP vision module
    (CLIP: `pre_norm`, QuickGELU, the projection of `...WithProjection` as the head; SigLIP: no
    class token, attention pooling); preprocessing from
    `folder`'s `preprocessor_config.json` when given and present (else ImageNet statistics,
    bicubic, crop 0.875)."""
    family, _, heads = family_of(module)
    c = module.config

    def refuse(setting: str) -> None:
        raise UnsupportedModelError(f"{type(module).__name__}: {setting} is not supported by vit_jax_va.ViT")

    act = c.hidden_act if isinstance(c.hidden_act, str) else None
    if act not in ACTIVATIONS:
        refuse(f"hidden_act={c.hidden_act!r} (supported: {', '.join(ACTIVATIONS)})")
    swiglu = family == "dinov2" and bool(getattr(c, "use_swiglu_ffn", False))
    if family == "dinov2":
        hidden = int(c.hidden_size * c.mlp_ratio)
        if swiglu:  # DINOv2 giant: two thirds of the width, rounded up to a multiple of 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    else:
        hidden = int(c.intermediate_size)
    num_classes = 0
    if heads:
        classifier = getattr(module, heads[0])
        if not hasattr(classifier, "out_features"):
            refuse(f"{heads[0]} type {type(classifier).__name__} (num_labels=0)")
        num_classes = int(classifier.out_features)
    if family == "siglip" and not getattr(c, "vision_use_head", True):
        refuse("vision_use_head=False (features without the attention-pooling head)")
    size = _pair(c.image_size)
    patch = _pair(c.patch_size)
    # DINOv2's registers come after the class token and get no position; the class token's
    # position is folded into it (`converters.hf`), so that no prefix token has one.
    registers = int(getattr(c, "num_register_tokens", 0) or 0) if family == "dinov2" else 0
    return ViTConfig(
        image_size=size, patch_size=patch, in_channels=int(c.num_channels), width=int(c.hidden_size),
        depth=int(c.num_hidden_layers), num_heads=int(c.num_attention_heads),
        mlp_ratio=hidden / c.hidden_size, qkv_bias=bool(getattr(c, "qkv_bias", True)), proj_bias=True,
        act=ACTIVATIONS[act], swiglu=swiglu, class_token=family != "siglip", distillation_token=family == "deit",
        num_register_tokens=registers, no_embed_class=registers > 0,
        pos_embed=True, pre_norm=family == "clip", layer_scale=family == "dinov2",
        layer_norm_eps=float(c.layer_norm_eps), num_classes=num_classes,
        pool="map" if family == "siglip" else "token", **preprocessing(folder, in_channels=int(c.num_channels)))


def preprocessing(folder: str | Path | None, in_channels: int = 3) -> dict[str, Any]:
    """`ViTConfig` preprocessing fields from an image processor's `preprocessor_config.json`
    in `folder`: mean, std, resampling, and either resize-then-centre-crop (`size.shortest_edge`
    with `crop_size`) or a squash to `size.height` x `size.width`."""
    path = Path(folder) / "preprocessor_config.json" if folder is not None else None
    if path is None or not path.is_file():
        return {"mean": IMAGENET_MEAN[:in_channels] if in_channels == 3 else (0.5,) * in_channels,
                "std": IMAGENET_STD[:in_channels] if in_channels == 3 else (0.5,) * in_channels}
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UnsupportedModelError(f"{path}: not a readable image-processor config ({err})") from None
    out: dict[str, Any] = {}
    if "image_mean" in settings:
        out["mean"] = tuple(float(v) for v in settings["image_mean"])
    if "image_std" in settings:
        out["std"] = tuple(float(v) for v in settings["image_std"])
    if settings.get("resample") in RESAMPLE:
        out["interpolation"] = RESAMPLE[settings["resample"]]
    size = settings.get("size") or {}
    crop = settings.get("crop_size") or {}
    if settings.get("do_center_crop") and "shortest_edge" in size and crop:
        out["crop_mode"] = "center"
        out["crop_fraction"] = min(1.0, float(crop.get("height", crop.get("width"))) / float(size["shortest_edge"]))
    elif settings.get("do_resize", True) and "height" in size:
        out["crop_mode"], out["crop_fraction"] = "squash", 1.0
    return out


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
