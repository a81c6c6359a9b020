"""A strict load of a flat state dict into a `vit_jax_va.ViT`: every key missing, unexpected
or mis-shaped is named (big_vision's `merge_params`), for any source's name map."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.config import ViTConfig
from vit_jax_va.model import ViT


def strict_load(state_dict: Mapping[str, np.ndarray], config: ViTConfig, *,
                key_of: Callable[[tuple[Any, ...]], str],
                to_ours: Callable[[tuple[Any, ...], np.ndarray], np.ndarray],
                source_layout: Callable[[tuple[Any, ...], tuple[int, ...]], tuple[int, ...]],
                origin: str = "the state dict") -> ViT:
    """A `ViT` of `config` whose every parameter comes from `state_dict`.

    Args:
      state_dict: source key -> array in the source's layout.
      key_of: our parameter path -> the source key.
      to_ours: (our path, source array) -> the array in our layout.
      source_layout: (our path, our shape) -> the shape the source stores.
      origin: how errors name the source (a file name).
    Raises:
      CheckpointError naming every missing, unexpected and mis-shaped key.
    """
    abstract = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    # (source key, our path, our shape); one source array may feed several of our parameters
    # (a fused projection split in two).
    expected = [(key_of(path), path, tuple(var.get_value().shape)) for path, var in nnx.to_flat_state(state)]
    keys = {key for key, _, _ in expected}
    missing = list(dict.fromkeys(f"{key} {list(source_layout(path, shape))}"
                                 for key, path, shape in expected if key not in state_dict))
    unexpected = [f"{key} {list(state_dict[key].shape)}" for key in state_dict if key not in keys]
    misshaped = list(dict.fromkeys(f"{key}: checkpoint {list(state_dict[key].shape)}, model "
                                   f"{list(source_layout(path, shape))}"
                                   for key, path, shape in expected
                                   if key in state_dict and tuple(state_dict[key].shape) != source_layout(path, shape)))
    if missing or unexpected or misshaped:
        parts = [f"{origin} does not match the {config.depth}-layer, width-{config.width}, "
                 f"{config.image_size[0]}x{config.image_size[1]}-pixel architecture:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("wrong shapes", misshaped)):
            if items:
                parts.append(f"{title} ({len(items)}): " + "; ".join(items))
        if ("pos_embed" in state_dict and "pos_embed" in keys
                and state_dict["pos_embed"].shape[-1] == config.width
                and state_dict["pos_embed"].shape[1] != config.pos_embed_length):
            parts.append("(a different pos_embed length usually means a different img_size: "
                         "pass img_size=... with model_name)")
        raise CheckpointError("\n  ".join(parts))
    values = {path: np.ascontiguousarray(to_ours(path, state_dict[key])) for key, path, _ in expected}
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
