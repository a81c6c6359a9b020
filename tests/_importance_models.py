"""Small random ViTs and a naive one-forward-per-head reference, shared by the importance tests.

A freshly initialised `ViT` has a zero classifier and near-zero prefix tokens (timm's init), so
every class would be equally likely and pruning would change nothing; these helpers redraw
every parameter so that heads matter and predictions differ between images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_jax_va import ViT, ViTConfig, single_head_mask, single_head_region_mask

TINY = dict(image_size=32, patch_size=8, width=32, depth=3, num_heads=4, num_classes=7,
            mlp_ratio=2.0)

CONFIGS = {
    "token": ViTConfig(**TINY),
    "avg": ViTConfig(**TINY, pool="avg", class_token=False, fc_norm=True),
    "distilled": ViTConfig(**TINY, distillation_token=True),
    "registers": ViTConfig(**{**TINY, "depth": 2}, num_register_tokens=2, layer_scale=True),
    "qk_norm_quick_gelu": ViTConfig(**{**TINY, "depth": 2}, qk_norm=True, act="quick_gelu"),
    # SigLIP's layout: attention pooling, no class token.
    "map_gelu_tanh": ViTConfig(**{**TINY, "depth": 2}, pool="map", class_token=False, act="gelu_tanh"),
    # BEiT's layout: relative position bias, no absolute position embedding, class-token pooling.
    "rel_pos_bias": ViTConfig(**{**TINY, "depth": 2}, rel_pos_bias=True, pos_embed=False, layer_scale=True),
    # timm's vit_relpos_* layout: a relative position bias without a class token.
    "rel_pos_bias_no_class_token": ViTConfig(**{**TINY, "depth": 2}, rel_pos_bias=True, pos_embed=False,
                                             class_token=False, pool="avg", fc_norm=True),
    # EVA-02's layout: rotary embedding on a reference grid, SwiGLU with its inner norm.
    "rope_swiglu": ViTConfig(**{**TINY, "depth": 2}, rope=True, rope_ref_grid=(3, 3), swiglu=True,
                             mlp_norm=True, layer_scale=True),
}


def random_model(config: ViTConfig, seed: int = 0, scale: float = 0.3) -> ViT:
    """A `ViT` whose every parameter is redrawn from N(0, scale^2) (LayerNorm and layer-scale
    factors around 1). numpy draws them: eager jax.random would compile once per shape."""
    model = ViT(config, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    rng = np.random.default_rng(seed)
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(state)
    new = []
    for path, leaf in paths_leaves:
        noise = scale * rng.standard_normal(leaf.shape).astype(np.float32)
        name = jax.tree_util.keystr(path)
        new.append(jnp.asarray(1.0 + noise if "scale" in name or "gamma" in name else noise))
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, new))


def random_images(config: ViTConfig, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *config.image_size, config.in_channels)).astype(np.float32)


def naive_logits(model: ViT, images, modes) -> dict[str, np.ndarray]:
    """One full masked forward per head through `model(...)`, per mode: `{mode: [L, H, B, K]}`
    logits, `{mode_features: [L, H, B, C]}` pooled features and `{mode_patches: [L, H, B, P, C]}`
    the last layer's normed patch tokens (`model.encode`, every row), plus the unpruned logits
    `[B, K]` under "unpruned", its features and patches under "unpruned_features" and
    "unpruned_patches" and the unpruned attention `[B, L, H, T, T]` under "attention"."""
    c = model.config
    images = jnp.asarray(images)
    forward = jax.jit(lambda head_mask, region_mask: model(
        images, head_mask=head_mask, region_mask=region_mask, return_attention=True))
    patches_of = jax.jit(lambda head_mask, region_mask: model.patch_tokens(model.encode(
        images, head_mask=head_mask, region_mask=region_mask)[0]))
    keep_heads = jnp.ones((c.depth, c.num_heads))
    keep_regions = jnp.ones((c.depth, c.num_heads, c.num_tokens, c.num_tokens))
    unpruned = forward(keep_heads, keep_regions)
    out = {"unpruned": np.asarray(unpruned.logits), "attention": np.asarray(unpruned.attention),
           "unpruned_features": np.asarray(unpruned.pre_logits),
           "unpruned_patches": np.asarray(patches_of(keep_heads, keep_regions))}
    out_width = c.num_classes or c.width  # a backbone's "logits" are its pooled features
    for mode in modes:
        logits = np.zeros((c.depth, c.num_heads, len(images), out_width), np.float32)
        features = np.zeros((c.depth, c.num_heads, len(images), c.width), np.float32)
        patches = np.zeros((c.depth, c.num_heads, len(images), c.num_patches, c.width), np.float32)
        for layer in range(c.depth):
            for head in range(c.num_heads):
                if mode == "head":
                    masks = (single_head_mask(c, layer, head), keep_regions)
                else:
                    masks = (keep_heads, single_head_region_mask(c, layer, head, mode))
                pruned = forward(*masks)
                logits[layer, head] = np.asarray(pruned.logits)
                features[layer, head] = np.asarray(pruned.pre_logits)
                patches[layer, head] = np.asarray(patches_of(*masks))
        out[mode] = logits
        out[f"{mode}_features"] = features
        out[f"{mode}_patches"] = patches
    return out


def naive_confidence(attention: np.ndarray, num_prefix_tokens: int) -> np.ndarray:
    """Voita et al.'s confidence from attention `[B, L, H, T, T]`: `[L, H, B]`."""
    return attention[:, :, :, num_prefix_tokens:].max(-1).mean(-1).transpose(1, 2, 0)


def naive_features(logits: np.ndarray, unpruned: np.ndarray) -> dict[str, np.ndarray]:
    """The feature metrics in float64 from pooled features `[..., B, C]` and unpruned `[B, C]`."""
    f, f0 = np.asarray(logits, np.float64), np.asarray(unpruned, np.float64)
    cos = (f * f0).sum(-1) / (np.linalg.norm(f, axis=-1) * np.linalg.norm(f0, axis=-1))
    return dict(feature_cos=1 - cos, feature_rel_l2=np.linalg.norm(f - f0, axis=-1) / np.linalg.norm(f0, axis=-1))


def naive_patch_metrics(patches: np.ndarray, unpruned: np.ndarray) -> dict[str, np.ndarray]:
    """The patch-token metrics in float64 from patch tokens `[..., B, P, C]` and unpruned
    `[B, P, C]`: the feature metrics of every patch token, averaged over the P patches."""
    per_patch = naive_features(patches, unpruned)
    return dict(patch_cos=per_patch["feature_cos"].mean(-1), patch_rel_l2=per_patch["feature_rel_l2"].mean(-1))


def naive_metrics(logits: np.ndarray, reference: np.ndarray, unpruned_logits: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """The ablation metrics computed directly in float64 from logits `[..., B, K]`."""
    def log_softmax(z):
        z = np.asarray(z, np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    logp, logp0 = log_softmax(logits), log_softmax(unpruned_logits)
    ref_index = np.broadcast_to(reference, logp.shape[:-1])[..., None]
    ref_logp = np.take_along_axis(logp, ref_index, axis=-1)[..., 0]
    k = min(5, logits.shape[-1])
    top5 = np.argsort(-logp, axis=-1, kind="stable")[..., :k]
    return dict(prob=np.exp(ref_logp), correct=logp.argmax(-1) == reference, loss=-ref_logp,
                kl=(np.exp(logp0) * (logp0 - logp)).sum(-1), top5_classes=top5,
                top5_probs=np.take_along_axis(np.exp(logp), top5, axis=-1))
