"""Checkpoints in and out of `vit_jax_va`. The only package that imports torch, timm and
transformers, and only inside the functions that need them.

Modules: `timm` (timm <-> ours: `from_timm`, `to_timm`, `source_module`, `at_image_size`,
`resized`), `timm_names` (the name and layout map), `timm_config` (timm settings -> `ViTConfig`,
refusals), `timm_write` (`ViTConfig` -> timm: `create_timm_model`), `hf` (transformers -> ours:
`from_hf`, `hf_module`, `hf_forward`), `hf_export` (ours -> transformers: `to_hf`, `save_hf`),
`hf_config` (transformers settings and image processors -> `ViTConfig`, refusals), `npz`
(Google's JAX `.npz` checkpoints: `from_npz`), `onnx` (ViT encoders in ONNX graphs exported from
transformers: `from_onnx`, `onnx_forward`), `torch_files` (checkpoint files -> numpy), `strict`
(a strict load for any name map), `parity` (logits and attention against the source module).
"""

from converters.hf import from_hf, hf_forward, hf_module
from converters.hf_config import config_from_hf
from converters.hf_export import hf_architecture, save_hf, to_hf
from converters.npz import from_npz, timm_reference
from converters.onnx import from_onnx, onnx_forward
from converters.parity import parity_report, timm_forward
from converters.timm import at_image_size, from_timm, resized, source_module, to_timm
from converters.timm_config import UnsupportedModelError, config_from_timm
from converters.timm_write import create_timm_model
from converters.torch_files import read_state_dict

__all__ = ["UnsupportedModelError", "at_image_size", "config_from_hf", "config_from_timm", "from_hf",
           "from_npz", "from_onnx", "onnx_forward", "hf_forward", "timm_reference", "hf_module", "create_timm_model", "from_timm",
           "hf_architecture", "parity_report", "read_state_dict", "resized", "save_hf", "source_module", "timm_forward",
           "to_hf", "to_timm"]
