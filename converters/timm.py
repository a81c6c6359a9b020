"""timm `VisionTransformer` <-> `vit_jax_va.ViT`.

Conversion is one function that maps names and one that transforms values, and their inverses
(`converters.timm_names`). Loading is strict: every key missing, unexpected or mis-shaped is
named (`converters.strict`), and every timm setting is either handled or refused by name
(`converters.timm_config`). Files are read by `converters.torch_files`; parity with the source
module is measured by `converters.parity`.

torch and timm are imported inside the functions so that importing `converters` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from converters.strict import strict_load
from converters.timm_config import UnsupportedModelError, config_from_timm
from converters.timm_write import create_timm_model, timm_family
from converters.timm_names import from_family_names, timm_key, timm_layout, to_family_names, to_ours, to_torch_layout
from converters.timm_relpos import is_relpos, relpos_state_dict
from converters.torch_files import local_file, numpy_state_dict, read_state_dict
from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.config import ViTConfig
from vit_jax_va.model import ViT


def from_timm(source: Any, model_name: str | None = None, *, config: ViTConfig | None = None,
              image_size: int | tuple[int, int] | None = None, **model_kwargs: Any) -> ViT:
    """Convert a timm ViT to a `vit_jax_va.ViT`.

    Args:
      source: a timm `VisionTransformer` / `VisionTransformerDistilled` module; a state dict
        (str -> torch tensor or numpy array); a path to `.safetensors` or `.pth`/`.pt`/`.bin`
        (loaded with `torch.load(weights_only=True)`, never a full unpickle; a training
        checkpoint's 'state_dict' or 'model' entry is used, and a DataParallel 'module.' prefix
        is stripped); or a timm model name, whose pretrained weights timm downloads.
      model_name: the timm architecture of a state dict or file (e.g. 'vit_base_patch16_224').
      config: alternatively, the `ViTConfig` of a state dict or file.
      image_size: run the model at this size in pixels (`(height, width)`, or an int for a
        square) instead of the checkpoint's own: timm resamples the position embedding
        (`VisionTransformer.set_input_size`: bicubic, antialiased), so the result computes what
        the timm model set to that size computes. The patch size stays; the size must be a
        multiple of it.
      **model_kwargs: passed to `timm.create_model` with `model_name` (e.g. `num_classes=10`,
        or `img_size=384` for weights trained at 384 px). `num_classes` and `in_chans` default
        to what the weights say.
    Half-precision weights are converted to float32.
    """
    import torch.nn as nn

    if image_size is not None:
        if config is not None:
            state_dict = (numpy_state_dict(source) if isinstance(source, Mapping)
                          else read_state_dict(_existing_file(source)))
            module = create_timm_model(config, state_dict)
        else:
            module = source_module(source, model_name, **model_kwargs)
        return from_timm(at_image_size(module, image_size))

    if isinstance(source, nn.Module):
        config = config_from_timm(source)
        if is_relpos(source):  # its position bias is read off the module
            return _from_state_dict(relpos_state_dict(source, _refuse_for(source)), config)
        return _from_state_dict(numpy_state_dict(source.state_dict()), config)
    if isinstance(source, Mapping):
        state_dict = numpy_state_dict(source)
        origin = "the state dict"
    elif isinstance(source, (str, os.PathLike)):
        path = local_file(source)
        if path is None:
            return from_timm(_hub_module(str(source), model_kwargs))
        state_dict = read_state_dict(path)
        origin = str(path)
    else:
        raise TypeError(f"cannot convert a {type(source).__name__}: pass a timm module, "
                        "a state dict, a checkpoint path or a timm model name")
    if config is None:
        _require_architecture(origin, model_name, "or config=")
        architecture = _create_architecture(model_name, state_dict, model_kwargs)
        if is_relpos(architecture) and any(".attn.rel_pos." in k for k in state_dict):
            return from_timm(source_module(source, model_name, **model_kwargs))
        config = config_from_timm(architecture)
    return _from_state_dict(state_dict, config, origin)


def _refuse_for(module: Any):
    def refuse(setting: str) -> None:
        raise UnsupportedModelError(f"{type(module).__name__}: {setting} is not supported by vit_jax_va.ViT")
    return refuse


def _require_architecture(origin: str, model_name: str | None, alternative: str = "") -> None:
    if model_name is None:
        raise ValueError(f"converting {origin} needs model_name= (its timm architecture, e.g. "
                         f"'vit_base_patch16_224'){' ' + alternative if alternative else ''}")


def _hub_module(name: str, model_kwargs: dict[str, Any]) -> Any:
    import timm

    try:
        module = timm.create_model(name, pretrained=True, **model_kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"{name!r} is neither a file nor a timm model name") from None
        raise CheckpointError(f"could not fetch pretrained weights for {name!r} ({err}); without "
                              "network access, pass a local .safetensors/.pth file and "
                              f"model_name={name!r}") from err
    except Exception as err:  # hub and network errors come in many types
        raise CheckpointError(f"could not fetch pretrained weights for {name!r} ({err}); without "
                              "network access, pass a local .safetensors/.pth file and "
                              f"model_name={name!r}") from err
    return module.eval()


def at_image_size(module: Any, image_size: int | tuple[int, int]) -> Any:
    """A copy of the timm ViT `module` set to take `image_size` pixels (`(height, width)` or an
    int): timm's `set_input_size` resamples the position embedding. Refuses a size that is not
    a multiple of the patch size, naming both."""
    import copy

    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(v) for v in image_size)
    patch = tuple(module.patch_embed.patch_size)
    if len(size) != 2 or any(s <= 0 or s % p for s, p in zip(size, patch)):
        raise ValueError(f"image_size {size} is not a multiple of the patch size {patch}")
    module = copy.deepcopy(module).eval()
    if not hasattr(module, "set_input_size"):
        raise UnsupportedModelError(f"{type(module).__name__}: timm cannot change its input size")
    module.set_input_size(img_size=size)
    return module


def resized(model: ViT, image_size: int | tuple[int, int]) -> ViT:
    """`model` run at `image_size` pixels, its position embedding resampled by timm (through
    the timm model of its weights, `create_timm_model(config, to_timm(model))`: a ViT, Beit or
    Eva); the preprocessing and class names stay."""
    config = model.config
    resampled = from_timm(at_image_size(create_timm_model(config, to_timm(model)), image_size))
    resampled.config = resampled.config.replace(
        mean=config.mean, std=config.std, interpolation=config.interpolation,
        crop_fraction=config.crop_fraction, crop_mode=config.crop_mode, class_names=config.class_names)
    return resampled


def _existing_file(source: Any):
    path = local_file(source)
    if path is None:
        raise FileNotFoundError(f"no checkpoint file at {source}")
    return path


def source_module(source: Any, model_name: str | None = None, **model_kwargs: Any) -> Any:
    """The timm module that `source` describes, holding the source's own weights (eval mode).

    Takes what `from_timm` takes (a module, a file with `model_name`, a hub name). A parity
    check against this module tests the conversion against the original, not against a model
    rebuilt from the converted weights. A file whose keys timm's `load_state_dict(strict=True)`
    refuses is reported with the keys and the file's name.
    """
    import torch
    import torch.nn as nn

    if isinstance(source, nn.Module):
        return source.eval()
    path = local_file(source)
    if path is None:
        return _hub_module(str(source), model_kwargs)
    _require_architecture(str(path), model_name)
    state_dict = read_state_dict(path)
    module = _create_architecture(model_name, state_dict, model_kwargs)
    try:
        module.load_state_dict({k: torch.tensor(np.asarray(v, np.float32))
                                for k, v in state_dict.items()}, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"timm's {model_name!r} does not load {path}: {err}") from None
    return module.eval()


def _create_architecture(model_name: str, state_dict: Mapping[str, np.ndarray],
                         model_kwargs: dict[str, Any]) -> Any:
    import timm

    kwargs = dict(model_kwargs)
    if "head.weight" in state_dict:
        kwargs.setdefault("num_classes", state_dict["head.weight"].shape[0])
    if "patch_embed.proj.weight" in state_dict and state_dict["patch_embed.proj.weight"].ndim == 4:
        kwargs.setdefault("in_chans", state_dict["patch_embed.proj.weight"].shape[1])
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except RuntimeError as err:
        raise ValueError(f"timm cannot build {model_name!r}: {err}") from None


def _from_state_dict(state_dict: Mapping[str, np.ndarray], config: ViTConfig,
                     origin: str = "the state dict") -> ViT:
    state_dict = from_family_names(state_dict, swiglu=config.swiglu)
    return strict_load(state_dict, config, key_of=timm_key, to_ours=to_ours,
                       source_layout=timm_layout, origin=origin)


def to_timm(model: ViT) -> dict[str, np.ndarray]:
    """A timm state dict (numpy float32) that timm's `load_state_dict(strict=True)` accepts for
    `create_timm_model(model.config, ...)` (a `VisionTransformer`, or a `Beit` or
    `VisionTransformerRelPos` / `Eva` for a relative position bias / rotary embedding, in their
    names: `timm_family`); `from_timm(to_timm(m), config=m.config)`
    is bit-exact."""
    config = model.config
    state_dict = {timm_key(path): np.ascontiguousarray(to_torch_layout(path, np.asarray(var.get_value())))
                  for path, var in nnx.to_flat_state(nnx.state(model))}
    if config.rope:
        return to_family_names(state_dict, "eva", packed_mlp=config.swiglu and not config.mlp_norm)
    family = timm_family(config, state_dict)
    if family == "beit":
        return to_family_names(state_dict, "beit")
    if family == "relpos":  # VisionTransformerRelPos: the table inside attn.rel_pos
        return {k.replace(".attn.relative_position_bias_table", ".attn.rel_pos.relative_position_bias_table"): v
                for k, v in state_dict.items()}
    return state_dict
