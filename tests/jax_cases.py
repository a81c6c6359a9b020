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


def assert_same_predictions(a, b, atol: float = 1e-5) -> None:
    """Two ablation results (`AblationResult`s, or mappings such as a store's importance group)
    computed by different programs (another chunk shape, a sharded mesh) predict the same: their
    probabilities agree within `atol`, and their class rankings too, except that classes whose
    probabilities tie within `atol` may come in either order. `correct` and `reference` may then
    differ only where the top-1 class did. (The last bits of a matmul depend on the program, so
    two near-tied classes can swap: which one comes first is no property of the model.)"""
    def get(result, key):
        return np.asarray(result[key] if hasattr(result, "keys") else getattr(result, key))

    top1_may_differ = {}
    for prefix in ("", "baseline_"):
        probs_a, probs_b = get(a, f"{prefix}top5_probs"), get(b, f"{prefix}top5_probs")
        np.testing.assert_allclose(probs_a, probs_b, atol=atol, err_msg=f"{prefix}top5_probs")
        differ = get(a, f"{prefix}top5_classes") != get(b, f"{prefix}top5_classes")
        # A swapped pair holds tied probabilities: position k has (almost) the same value in both.
        tied = np.abs(probs_a - np.roll(probs_a, -1, axis=-1)) <= atol
        tied |= np.abs(probs_a - np.roll(probs_a, 1, axis=-1)) <= atol
        assert not (differ & ~tied).any(), f"{prefix}top5_classes differ where no probabilities tie"
        top1_may_differ[prefix] = differ[..., 0]
    for key, prefix in (("correct", ""), ("baseline_correct", "baseline_"), ("reference", "baseline_")):
        try:
            same = get(a, key) == get(b, key)
        except (KeyError, AttributeError):
            continue
        assert (same | top1_may_differ[prefix]).all(), f"{key} differs where the top-1 class is not tied"
