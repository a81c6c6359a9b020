"""vit_jax_va: which attention heads of a Vision Transformer matter, how strongly patches attend
to their neighbours, and what attention patterns heads have learned (Li et al., TVCG 2023).

Pure JAX/Flax: this package never imports torch, timm or UI libraries.
"""

__version__ = "0.1.0"

from vit_jax_va.checkpoint import CheckpointError, load_module, save_module
from vit_jax_va.config import ViTConfig

__all__ = ["CheckpointError", "ViTConfig", "load_module", "save_module", "__version__"]
