"""vit_jax_va: which attention heads of a Vision Transformer matter, how strongly patches attend
to their neighbours, and what attention patterns heads have learned (Li et al., TVCG 2023).

Pure JAX/Flax: this package never imports torch, timm or UI libraries.
"""

__version__ = "0.1.0"

from vit_jax_va.checkpoint import (CheckpointError, load, load_module, save, save_module,
                                   weights_hash)
from vit_jax_va.config import ViTConfig
from vit_jax_va.masks import (PRUNE_MODES, prune_region, region_masks, single_head_mask,
                              single_head_region_mask)
from vit_jax_va.model import ViT, ViTOutput
from vit_jax_va.preprocess import preprocess

__all__ = [
    "CheckpointError", "PRUNE_MODES", "ViT", "ViTConfig", "ViTOutput", "__version__", "load",
    "load_module", "preprocess", "prune_region", "region_masks", "save", "save_module",
    "single_head_mask", "single_head_region_mask", "weights_hash",
]
