"""Checkpoints in and out of `vit_jax_va`. The only package that imports torch and timm, and
only inside the functions that need them."""

from converters.timm import (UnsupportedModelError, config_from_timm, create_timm_model,
                             from_timm, parity_report, read_state_dict, source_module, timm_forward,
                             to_timm)

__all__ = ["UnsupportedModelError", "config_from_timm", "create_timm_model", "from_timm",
           "parity_report", "read_state_dict", "source_module", "timm_forward", "to_timm"]
