"""timm `VisionTransformer` <-> `vit_jax_va.ViT`.

Conversion is one function that maps names and one that transforms values (and their
inverses): our parameter names mirror timm's, except that Flax calls a linear or conv weight
`kernel` (stored transposed: `[in, out]`, conv `[kh, kw, in, out]`) and a LayerNorm weight
`scale`. Loading is strict: every key missing, unexpected or mis-shaped is named, and every
timm setting is either handled or refused by name (`config_from_timm`).

torch and timm are imported inside the functions so that importing `converters` stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.config import ViTConfig
from vit_jax_va.model import ViT

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIXES = (".safetensors",)

class UnsupportedModelError(CheckpointError):
    """The timm model uses a setting this converter does not implement (named in the message)."""


# Names and values ----------------------------------------------------------------------------

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


def _our_layout(path: tuple[Any, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The timm shape of our parameter at `path` with our `shape`."""
    return to_torch_layout(path, np.empty(shape, np.uint8)).shape


# Config ---------------------------------------------------------------------------------------

def config_from_timm(model: Any) -> ViTConfig:
    """Read a `ViTConfig` off a timm `VisionTransformer` (or DeiT `VisionTransformerDistilled`).

    Every structural setting is checked against what `vit_jax_va.ViT` implements; anything else
    (qk-norm, attention-output norm, gated attention, rotary/relative positions, other block,
    MLP, norm or activation types, attention pooling, patch-embedding norm) raises
    `UnsupportedModelError` naming the setting. The converter reads the modules, not the
    constructor arguments, so settings that leave no trace in them (drop rates, init schemes,
    `fused_attn`) cannot change what it converts.
    """
    import timm
    import torch.nn as nn
    from timm.layers import LayerScale, Mlp, PatchEmbed
    from timm.models.vision_transformer import Attention, Block, VisionTransformer

    def refuse(setting: str) -> None:
        raise UnsupportedModelError(
            f"{type(model).__name__}: {setting} is not supported by vit_jax_va.ViT")

    if not isinstance(model, VisionTransformer):
        refuse(f"model class {type(model).__module__}.{type(model).__name__} "
               "(only timm VisionTransformer and VisionTransformerDistilled are)")
    if type(model.patch_embed) is not PatchEmbed:
        refuse(f"patch embedding {type(model.patch_embed).__name__}")
    if not isinstance(model.patch_embed.norm, nn.Identity):
        refuse("a norm layer inside the patch embedding (embed_norm_layer)")
    if getattr(model, "attn_pool", None) is not None:
        refuse(f"attention pooling (global_pool={model.global_pool!r})")
    if model.global_pool not in ("token", "avg", "max", "avgmax"):
        refuse(f"global_pool={model.global_pool!r}")

    blocks = list(model.blocks)
    first = blocks[0]
    eps = _layer_norm_eps(first.norm1, "blocks.0.norm1", refuse)
    for i, block in enumerate(blocks):
        where = f"blocks.{i}"
        if type(block) is not Block:
            refuse(f"{where} block type {type(block).__name__}")
        attn, mlp = block.attn, block.mlp
        if type(attn) is not Attention:
            refuse(f"{where}.attn type {type(attn).__name__}")
        if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
            refuse(f"{where}.attn qk_norm")
        if not isinstance(attn.norm, nn.Identity):
            refuse(f"{where}.attn scale_attn_norm")
        if getattr(attn, "gate", None) is not None:
            refuse(f"{where}.attn gated attention")
        if attn.num_heads * attn.head_dim != model.embed_dim or attn.proj.out_features != model.embed_dim:
            refuse(f"{where}.attn head dim {attn.head_dim} x {attn.num_heads} heads != "
                   f"embed_dim {model.embed_dim} (attn_head_dim / dim_out)")
        if type(mlp) is not Mlp:
            refuse(f"{where}.mlp type {type(mlp).__name__}")
        if not isinstance(mlp.norm, nn.Identity):
            refuse(f"{where}.mlp scale_mlp_norm")
        if type(mlp.act) is not nn.GELU or mlp.act.approximate != "none":
            refuse(f"{where}.mlp activation {mlp.act!r} (only exact GELU is)")
        for name in ("norm1", "norm2"):
            if _layer_norm_eps(getattr(block, name), f"{where}.{name}", refuse) != eps:
                refuse(f"{where}.{name} eps differing from blocks.0.norm1")
        for name in ("ls1", "ls2"):
            scale = getattr(block, name)
            if not isinstance(scale, (LayerScale, nn.Identity)):
                refuse(f"{where}.{name} type {type(scale).__name__}")
        same = (attn.num_heads == first.attn.num_heads,
                (attn.qkv.bias is None) == (first.attn.qkv.bias is None),
                (attn.proj.bias is None) == (first.attn.proj.bias is None),
                (mlp.fc1.bias is None) == (attn.proj.bias is None),
                (mlp.fc2.bias is None) == (attn.proj.bias is None),
                mlp.fc1.out_features == first.mlp.fc1.out_features,
                type(block.ls1) is type(first.ls1) and type(block.ls2) is type(first.ls1))
        if not all(same):
            refuse(f"{where} differing from blocks.0 (heads, biases, MLP width or layer scale)")
    for name in ("norm_pre", "norm", "fc_norm"):
        module = getattr(model, name)
        if not isinstance(module, nn.Identity) and _layer_norm_eps(module, name, refuse) != eps:
            refuse(f"{name} eps differing from the blocks'")

    pre_norm = not isinstance(model.norm_pre, nn.Identity)
    if (model.patch_embed.proj.bias is None) != pre_norm:
        refuse("a patch-embedding bias that does not follow pre_norm (bias iff not pre_norm)")
    distilled = hasattr(model, "dist_token")
    if distilled and not isinstance(model.head, nn.Identity) and not isinstance(model.head_dist, nn.Linear):
        refuse("a distilled model without a distillation head")
    for name in ("head",) + (("head_dist",) if distilled else ()):
        if not isinstance(getattr(model, name), (nn.Linear, nn.Identity)):
            refuse(f"{name} type {type(getattr(model, name)).__name__}")

    data = timm.data.resolve_data_config({}, model=model)
    in_channels = model.patch_embed.proj.in_channels
    mean, std = tuple(data["mean"]), tuple(data["std"])
    if len(mean) != in_channels:
        # timm keeps RGB statistics for models adapted to other channel counts; use their mean.
        mean, std = (float(np.mean(mean)),) * in_channels, (float(np.mean(std)),) * in_channels
    return ViTConfig(
        image_size=tuple(model.patch_embed.img_size),
        patch_size=tuple(model.patch_embed.patch_size),
        in_channels=in_channels,
        width=model.embed_dim,
        depth=len(blocks),
        num_heads=first.attn.num_heads,
        mlp_ratio=first.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=first.attn.qkv.bias is not None,
        proj_bias=first.attn.proj.bias is not None,
        class_token=model.cls_token is not None,
        distillation_token=distilled,
        num_register_tokens=model.num_reg_tokens,
        pos_embed=model.pos_embed is not None,
        no_embed_class=model.no_embed_class,
        pre_norm=pre_norm,
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        pool=model.global_pool,
        pool_include_prefix=bool(model.pool_include_prefix),
        layer_scale=isinstance(first.ls1, LayerScale),
        layer_norm_eps=eps,
        num_classes=model.num_classes,
        mean=mean,
        std=std,
        interpolation=data["interpolation"],
        crop_fraction=float(data["crop_pct"]),
        crop_mode=data.get("crop_mode", "center"),
    )


def _layer_norm_eps(module: Any, where: str, refuse: Any) -> float:
    import torch.nn as nn

    if not isinstance(module, nn.LayerNorm) or not module.elementwise_affine or module.bias is None:
        refuse(f"{where} norm {type(module).__name__} (only affine LayerNorm is)")
    return float(module.eps)


def timm_kwargs(config: ViTConfig) -> dict[str, Any]:
    """Constructor kwargs for timm's `VisionTransformer` (or the distilled one) for `config`."""
    if config.mlp_hidden != config.width * config.mlp_ratio:
        raise ValueError(f"mlp_ratio={config.mlp_ratio} gives a fractional MLP width")
    kwargs = dict(
        img_size=config.image_size, patch_size=config.patch_size, in_chans=config.in_channels,
        num_classes=config.num_classes, global_pool=config.pool, embed_dim=config.width,
        depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias, proj_bias=config.proj_bias,
        init_values=1.0 if config.layer_scale else None, class_token=config.class_token,
        pos_embed="learn" if config.pos_embed else "none", no_embed_class=config.no_embed_class,
        reg_tokens=config.num_register_tokens, pre_norm=config.pre_norm,
        final_norm=config.final_norm, fc_norm=config.fc_norm,
        pool_include_prefix=config.pool_include_prefix,
    )
    if config.layer_norm_eps != 1e-6:
        import functools

        import torch.nn as nn

        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=config.layer_norm_eps)
    return kwargs


def create_timm_model(config: ViTConfig, state_dict: Mapping[str, Any] | None = None) -> Any:
    """A timm model with `config`'s architecture in eval mode, loaded strictly from `state_dict`."""
    import torch
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    cls = VisionTransformerDistilled if config.distillation_token else VisionTransformer
    model = cls(**timm_kwargs(config))
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}),
                            "mean": config.mean, "std": config.std,
                            "interpolation": config.interpolation,
                            "crop_pct": config.crop_fraction, "crop_mode": config.crop_mode,
                            "input_size": (config.in_channels, *config.image_size)}
    if state_dict is not None:
        model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()},
                              strict=True)
    return model.eval()


# In -------------------------------------------------------------------------------------------

def from_timm(source: Any, model_name: str | None = None, *, config: ViTConfig | None = None,
              **model_kwargs: Any) -> ViT:
    """Convert a timm ViT to a `vit_jax_va.ViT`.

    Args:
      source: a timm `VisionTransformer` / `VisionTransformerDistilled` module; a state dict
        (str -> torch tensor or numpy array); a path to `.safetensors` or `.pth`/`.pt`/`.bin`
        (loaded with `torch.load(weights_only=True)`, never a full unpickle; a training
        checkpoint's 'state_dict' or 'model' entry is used, and a DataParallel 'module.' prefix
        is stripped); or a timm model name, whose pretrained weights timm downloads.
      model_name: the timm architecture of a state dict or file (e.g. 'vit_base_patch16_224').
      config: alternatively, the `ViTConfig` of a state dict or file.
      **model_kwargs: passed to `timm.create_model` with `model_name` (e.g. `num_classes=10`,
        `img_size=384`). `num_classes` and `in_chans` default to what the weights say.
    Half-precision weights are converted to float32.
    """
    import torch.nn as nn

    if isinstance(source, nn.Module):
        return _from_state_dict(_numpy_state_dict(source.state_dict()), config_from_timm(source))
    if isinstance(source, Mapping):
        state_dict = _numpy_state_dict(source)
        origin = "the state dict"
    elif isinstance(source, (str, os.PathLike)):
        path = _local_file(source)
        if path is None:
            return from_timm(_hub_module(str(source), model_kwargs))
        state_dict = read_state_dict(path)
        origin = str(path)
    else:
        raise TypeError(f"cannot convert a {type(source).__name__}: pass a timm module, "
                        "a state dict, a checkpoint path or a timm model name")
    if config is None:
        _require_architecture(origin, model_name, "or config=")
        config = config_from_timm(_create_architecture(model_name, state_dict, model_kwargs))
    return _from_state_dict(state_dict, config, origin)


def _local_file(source: str | os.PathLike) -> Path | None:
    """The checkpoint file `source` names, or None when it is a timm model name."""
    path = Path(source)
    if path.exists():
        return path
    if path.suffix in TORCH_SUFFIXES + SAFETENSORS_SUFFIXES or os.sep in str(source):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    return None


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
    path = _local_file(source)
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


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a timm checkpoint file into a dict of float32 numpy arrays (see `from_timm`)."""
    import torch

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        raise CheckpointError(f"{path}: original JAX .npz ViT checkpoints are not read directly; "
                              "load them into timm (model.load_pretrained(path)) and convert the module")
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
    return _numpy_state_dict(loaded)


def _numpy_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
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


def _from_state_dict(state_dict: Mapping[str, np.ndarray], config: ViTConfig,
                     origin: str = "the state dict") -> ViT:
    abstract = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    expected = {timm_key(path): (path, tuple(var.get_value().shape))
                for path, var in nnx.to_flat_state(state)}
    missing = [f"{key} {list(_our_layout(path, shape))}"
               for key, (path, shape) in expected.items() if key not in state_dict]
    unexpected = [f"{key} {list(state_dict[key].shape)}" for key in state_dict if key not in expected]
    misshaped = [f"{key}: checkpoint {list(state_dict[key].shape)}, model "
                 f"{list(_our_layout(path, shape))}"
                 for key, (path, shape) in expected.items()
                 if key in state_dict and tuple(state_dict[key].shape) != _our_layout(path, shape)]
    if missing or unexpected or misshaped:
        parts = [f"{origin} does not match the {config.depth}-layer, width-{config.width}, "
                 f"{config.image_size[0]}x{config.image_size[1]}-pixel architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("wrong shapes", misshaped)):
            if items:
                parts.append(f"{title} ({len(items)}): " + "; ".join(items))
        if ("pos_embed" in state_dict and "pos_embed" in expected
                and state_dict["pos_embed"].shape[-1] == config.width
                and state_dict["pos_embed"].shape[1] != config.pos_embed_length):
            parts.append("(a different pos_embed length usually means a different img_size: "
                         "pass img_size=... with model_name)")
        raise CheckpointError("\n  ".join(parts))
    values = {path: np.ascontiguousarray(to_ours(path, state_dict[key]))
              for key, (path, _) in expected.items()}
    pure = nnx.to_pure_dict(state)
    _fill(pure, (), values)
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def _fill(tree: dict, prefix: tuple, values: dict[tuple, np.ndarray]) -> None:
    for key, sub in tree.items():
        path = (*prefix, key)
        if isinstance(sub, dict):
            _fill(sub, path, values)
        else:
            tree[key] = jax.numpy.asarray(values[path])


# Out ------------------------------------------------------------------------------------------

def to_timm(model: ViT) -> dict[str, np.ndarray]:
    """A timm state dict (numpy float32) that timm's `load_state_dict(strict=True)` accepts for
    `create_timm_model(model.config)`; `from_timm(to_timm(m), config=m.config)` is bit-exact."""
    return {timm_key(path): np.ascontiguousarray(to_torch_layout(path, np.asarray(var.get_value())))
            for path, var in nnx.to_flat_state(nnx.state(model))}


# Parity ---------------------------------------------------------------------------------------

def timm_forward(timm_model: Any, images_nchw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Run a timm ViT in eval mode and capture every layer's post-softmax attention.

    With fused attention off, the attention timm computed is read at `attn.attn_drop`'s input;
    with it on (scaled_dot_product_attention never forms the matrix), it is recomputed from the
    query and key timm produced, read at `attn.q_norm`/`attn.k_norm`.
    Returns logits `[B, K]` and attention `[B, L, H, T, T]` as numpy.
    """
    import torch

    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for layer, block in enumerate(timm_model.blocks):
        for name in ("q_norm", "k_norm", "attn_drop"):
            hooks.append(getattr(block.attn, name).register_forward_hook(
                lambda _m, args, out, key=(layer, name): captured.__setitem__(key, out)))
    try:
        with torch.inference_mode():
            logits = timm_model.eval()(images_nchw)
    finally:
        for hook in hooks:
            hook.remove()
    attention = []
    for layer, block in enumerate(timm_model.blocks):
        if (layer, "attn_drop") in captured:
            attention.append(captured[layer, "attn_drop"])
        else:
            q = captured[layer, "q_norm"] * block.attn.scale
            attention.append((q @ captured[layer, "k_norm"].transpose(-2, -1)).softmax(-1))
    return logits.numpy(), torch.stack(attention, dim=1).numpy()


def parity_report(timm_model: Any, model: ViT, num_images: int = 4, seed: int = 0) -> dict[str, float]:
    """Max |difference| of logits and of every layer's attention between a timm model and ours
    on seeded standard-normal inputs. Runs ours at full float32 matmul precision."""
    import torch

    config = model.config
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, *config.image_size, config.in_channels), np.float32)
    timm_logits, timm_attention = timm_forward(timm_model, torch.from_numpy(images.transpose(0, 3, 1, 2)))
    with jax.default_matmul_precision("highest"):
        out = model(jax.numpy.asarray(images), return_attention=True)
    return {"logits_max_abs_diff": float(np.max(np.abs(np.asarray(out.logits) - timm_logits))),
            "attention_max_abs_diff": float(np.max(np.abs(np.asarray(out.attention) - timm_attention))),
            "num_images": num_images}
