"""vit_jax_va: which attention heads of a Vision Transformer matter, how strongly patches attend
to their neighbours, and what attention patterns heads have learned (Li et al., TVCG 2023).

Pure JAX/Flax: this package never imports torch, timm or UI libraries.
"""

__version__ = "0.1.0"

from vit_jax_va.autoencoder import (PatternAutoencoder, ReconstructionErrors, TrainingLog,
                                    encode_items, load_autoencoder, normalise_items,
                                    reconstruct_items, reconstruction_errors, save_autoencoder,
                                    train_autoencoder)
from vit_jax_va.checkpoint import (CheckpointError, identity_differences, load, load_module,
                                   model_identity, save, save_module, weights_hash)
from vit_jax_va.config import ViTConfig
from vit_jax_va.data import (DataError, ImageDataset, ImageFileError, SkippedImage,
                             load_fashion_mnist, load_image_files, load_image_folder, load_mnist)
from vit_jax_va.head_scores import head_confidence_per_image, normalise_by_layer, taylor_importance
from vit_jax_va.importance import HeadAblation, ablate_heads
from vit_jax_va.masks import (PRUNE_MODES, prune_region, region_masks, single_head_mask,
                              single_head_region_mask)
from vit_jax_va.model import ViT, ViTOutput
from vit_jax_va.patterns import (CLS_COLUMN, CLS_ROW, PROJECTIONS, PatternSpace, cls_maps,
                                 offset_counts, pattern_space, project_2d, recentred_map,
                                 recentred_query_maps)
from vit_jax_va.preprocess import preprocess
from vit_jax_va.pruning_curve import PruningCurve, cumulative_head_masks, pruning_curve
from vit_jax_va.store import Run, RunError, list_runs, open_run
from vit_jax_va.strength import (STATISTICS, LayerTrend, cls_share,
                                 head_confidence, head_entropy, hop_profile,
                                 layer_trend, mean_attention_distance, num_rings,
                                 strength_statistics)
from vit_jax_va.sweep import Sweep, SweepOptions, usable_images

from types import ModuleType as _ModuleType  # noqa: E402

__all__ = sorted(name for name, value in globals().items()
                 if not name.startswith("_") and not isinstance(value, _ModuleType))
