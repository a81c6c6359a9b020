"""Random `ViT`s for tests: every parameter drawn from N(0, 0.1) with a fixed seed, so that
no head or layer scale is negligible (init-time values hide wrongly wired tensors)."""

import jax
import numpy as np
from flax import nnx

from vit_jax_va import ViT, ViTConfig


def random_vit(config: ViTConfig, seed: int = 0) -> ViT:
    model = ViT(config, rngs=nnx.Rngs(seed))
    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    redrawn = jax.tree.map(lambda a: (rng.standard_normal(a.shape) * 0.1).astype(np.float32),
                           nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, redrawn)
    nnx.update(model, state)
    return model


def random_images(config: ViTConfig, n: int = 2, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs `[n, H, W, C]`."""
    return np.random.default_rng(seed).standard_normal(
        (n, *config.image_size, config.in_channels)).astype(np.float32)
