"""Numerical parity of a converted model with its timm source: logits and every layer's
post-softmax attention on the same inputs."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from vit_jax_va.model import ViT


def timm_forward(timm_model: Any, images_nchw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Run a timm ViT in eval mode and capture every layer's post-softmax attention.

    With fused attention off, the attention timm computed is read at `attn.attn_drop`'s input.
    With it on (scaled_dot_product_attention never forms the matrix), it is recomputed from the
    query and key timm produced, read at `attn.q_norm`/`attn.k_norm`, where that is the query and
    key the product uses. Where it is not (BEiT's logits carry a position bias; EVA's query and
    key are rotated after the norm), the logits come from the model as it is set and the
    attention from a second, unfused run.
    Returns logits `[B, K]` and attention `[B, L, H, T, T]` as numpy.
    """
    import torch

    captured: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    needs_unfused = [block.attn for block in timm_model.blocks
                     if getattr(block.attn, "fused_attn", False) and not _product_of_norms(timm_model, block.attn)]
    for layer, block in enumerate(timm_model.blocks):
        for name in ("q_norm", "k_norm", "attn_drop"):
            if hasattr(block.attn, name):
                hooks.append(getattr(block.attn, name).register_forward_hook(
                    lambda _m, args, out, key=(layer, name): captured.__setitem__(key, out)))
    try:
        with torch.inference_mode():
            logits = timm_model.eval()(images_nchw)
            if needs_unfused:
                for attn in needs_unfused:
                    attn.fused_attn = False
                timm_model(images_nchw)
    finally:
        for attn in needs_unfused:
            attn.fused_attn = True
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


def _product_of_norms(timm_model: Any, attn: Any) -> bool:
    """Whether the attention logits of `attn` are exactly q_norm's output times k_norm's."""
    if not hasattr(attn, "q_norm"):
        return False  # BEiT: no norms to read, and a relative position bias
    # vit_relpos_*: a bias on the logits; EVA: queries and keys rotated after the norms.
    return getattr(attn, "rel_pos", None) is None and getattr(timm_model, "rope", None) is None


def parity_report(source: Any, model: ViT, num_images: int = 4, seed: int = 0) -> dict[str, float]:
    """Max |difference| of logits and of every layer's attention between a source (a timm
    module, a transformers one: `converters.hf.hf_forward`, or an `.onnx` path:
    `converters.onnx.onnx_forward`) and ours on seeded standard-normal inputs at
    our model's image size. Runs ours at full float32 matmul precision."""
    import torch

    from converters.hf_config import MODELS

    config = model.config
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((num_images, *config.image_size, config.in_channels), np.float32)
    if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".onnx"):
        from converters.onnx import onnx_forward

        def forward(images_nchw):
            return onnx_forward(source, images_nchw.numpy())
    elif type(source).__name__ in MODELS:
        from converters.hf import hf_forward

        def forward(images_nchw):
            return hf_forward(source, images_nchw)
    else:
        def forward(images_nchw):
            return timm_forward(source, images_nchw)
    timm_logits, timm_attention = forward(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    with jax.default_matmul_precision("highest"):
        out = model(jax.numpy.asarray(images), return_attention=True)
    return {"logits_max_abs_diff": float(np.max(np.abs(np.asarray(out.logits) - timm_logits))),
            "attention_max_abs_diff": float(np.max(np.abs(np.asarray(out.attention) - timm_attention))),
            "num_images": num_images}
