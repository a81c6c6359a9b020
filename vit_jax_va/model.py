"""A Flax NNX Vision Transformer that computes what timm's `VisionTransformer` computes.

Module and parameter names mirror timm's (`patch_embed.proj`, `blocks.3.attn.qkv`, `ls1.gamma`,
`fc_norm`, `head_dist`), so the converter is a rename plus a few transposes.

Masks are inputs, not state: `head_mask` `[layers, heads]` scales each head's output before the
attention output projection, and `region_mask` `[layers, heads, tokens, tokens]` scales entries
of the post-softmax attention matrix (the paper's partial pruning). Both are differentiable, so
`jax.vmap` over masks gives every ablation and `jax.grad` gives Taylor importance from one path.

Shapes: B batch, T tokens (prefix tokens, then patches in row-major grid order), C width,
H heads, D head dim, L layers, K classes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vit_jax_va.config import ViTConfig

_linear_init = nnx.initializers.truncated_normal(stddev=0.02)


class ViTOutput(NamedTuple):
    """What `ViT.__call__(..., return_attention=True)` returns.

    logits: `[B, K]` (pooled features `[B, C]` when the model has no classifier).
    attention: `[B, L, H, T, T]` post-softmax attention of every layer, after `region_mask`.
    pre_logits: `[B, C]` pooled (and fc-normed) features that feed the classifier.
    """

    logits: jax.Array
    attention: jax.Array
    pre_logits: jax.Array


def _linear(config: ViTConfig, d_in: int, d_out: int, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=_linear_init, rngs=rngs)


def _layer_norm(config: ViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.width, epsilon=config.layer_norm_eps, rngs=rngs)


class PatchEmbed(nnx.Module):
    """Non-overlapping patches -> tokens: `[B, H_img, W_img, channels]` -> `[B, patches, C]`."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.proj = nnx.Conv(config.in_channels, config.width, kernel_size=config.patch_size,
                             strides=config.patch_size, padding="VALID",
                             use_bias=not config.pre_norm, kernel_init=_linear_init, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.proj(images)
        return x.reshape(x.shape[0], -1, x.shape[-1])


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch (CaiT / DeiT-3), `gamma` `[C]`."""

    def __init__(self, width: int, init_value: float = 1e-5):
        self.gamma = nnx.Param(jnp.full((width,), init_value, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].reshape((1,) * (x.ndim - 1) + (-1,))


class Attention(nnx.Module):
    """Multi-head self-attention with head and region masks."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = _linear(config, config.width, 3 * config.width, config.qkv_bias, rngs)
        self.proj = _linear(config, config.width, config.width, config.proj_bias, rngs)

    def weights(self, x: jax.Array, region_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """Attention weights and values of every head.

        Args:
          x: `[B, T, C]` normalised tokens.
          region_mask: optional `[H, T, T]` multiplier of the post-softmax weights.
        Returns:
          attention `[B, H, T, T]` (rows: queries, columns: keys) and values `[B, T, H, D]`.
        """
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        # timm scales q before the product; doing the same keeps rounding identical.
        q = q * jnp.float32(self.head_dim ** -0.5)
        attention = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        if region_mask is not None:
            attention = attention * region_mask[None]
        return attention, v

    def head_outputs(self, attention: jax.Array, v: jax.Array) -> jax.Array:
        """Each head's output before the projection: `[B, T, H, D]`."""
        return jnp.einsum("bhqk,bkhd->bqhd", attention, v)

    def project(self, heads: jax.Array, head_mask: jax.Array | None = None) -> jax.Array:
        """Scale heads `[B, T, H, D]` by `head_mask` `[H]`, concatenate, project: `[B, T, C]`."""
        if head_mask is not None:
            heads = heads * head_mask[None, None, :, None]
        b, t = heads.shape[:2]
        return self.proj(heads.reshape(b, t, self.num_heads * self.head_dim))

    def __call__(self, x: jax.Array, head_mask: jax.Array | None = None,
                 region_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """`[B, T, C]` -> (output `[B, T, C]`, attention `[B, H, T, T]`)."""
        attention, v = self.weights(x, region_mask)
        return self.project(self.head_outputs(attention, v), head_mask), attention


class Mlp(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.fc1 = _linear(config, config.width, config.mlp_hidden, config.proj_bias, rngs)
        self.fc2 = _linear(config, config.mlp_hidden, config.width, config.proj_bias, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        # Exact (erf) GELU, as torch.nn.GELU(): the tanh approximation breaks parity at ~1e-3.
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.ls1 = LayerScale(config.width) if config.layer_scale else None
        self.norm2 = _layer_norm(config, rngs)
        self.mlp = Mlp(config, rngs=rngs)
        self.ls2 = LayerScale(config.width) if config.layer_scale else None

    def residual_attention(self, x: jax.Array, attn_out: jax.Array) -> jax.Array:
        """Add the (layer-scaled) attention branch `[B, T, C]` to the residual stream."""
        return x + (self.ls1(attn_out) if self.ls1 is not None else attn_out)

    def residual_mlp(self, x: jax.Array) -> jax.Array:
        """Add the (layer-scaled) MLP branch to the residual stream `[B, T, C]`."""
        out = self.mlp(self.norm2(x))
        return x + (self.ls2(out) if self.ls2 is not None else out)

    def __call__(self, x: jax.Array, head_mask: jax.Array | None = None,
                 region_mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """`[B, T, C]` -> (`[B, T, C]`, attention `[B, H, T, T]`); masks `[H]`, `[H, T, T]`."""
        attn_out, attention = self.attn(self.norm1(x), head_mask, region_mask)
        return self.residual_mlp(self.residual_attention(x, attn_out)), attention


class ViT(nnx.Module):
    """Vision Transformer, timm-compatible. See the module docstring for shapes and masks.

    Call as `model(images, head_mask=None, region_mask=None, return_attention=False)` with
    `images` float32 `[B, height, width, channels]` already normalised (`vit_jax_va.preprocess`).
    The stages are also callable one by one (`embed`, `blocks[l]`, `classify`) so that a sweep
    can reuse the residual stream before a pruned layer.
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.config = config
        c = config
        self.patch_embed = PatchEmbed(c, rngs=rngs)
        tiny = nnx.initializers.normal(stddev=1e-6)
        self.cls_token = nnx.Param(tiny(rngs.params(), (1, 1, c.width))) if c.class_token else None
        self.dist_token = (nnx.Param(_linear_init(rngs.params(), (1, 1, c.width)))
                           if c.distillation_token else None)
        self.reg_token = (nnx.Param(tiny(rngs.params(), (1, c.num_register_tokens, c.width)))
                          if c.num_register_tokens else None)
        self.pos_embed = (nnx.Param(_linear_init(rngs.params(), (1, c.pos_embed_length, c.width)))
                          if c.pos_embed else None)
        self.norm_pre = _layer_norm(c, rngs) if c.pre_norm else None
        self.blocks = nnx.List([Block(c, rngs=rngs) for _ in range(c.depth)])
        self.norm = _layer_norm(c, rngs) if c.final_norm and not c.fc_norm else None
        self.fc_norm = _layer_norm(c, rngs) if c.final_norm and c.fc_norm else None
        self.head = (nnx.Linear(c.width, c.num_classes, kernel_init=_linear_init,
                                rngs=rngs) if c.num_classes else None)
        self.head_dist = (nnx.Linear(c.width, c.num_classes, kernel_init=_linear_init,
                                     rngs=rngs) if c.num_classes and c.distillation_token else None)

    # Stages -------------------------------------------------------------------------------

    def embed(self, images: jax.Array) -> jax.Array:
        """Images `[B, height, width, channels]` -> tokens `[B, T, C]` (prefix, then patches)."""
        c = self.config
        expected = (*c.image_size, c.in_channels)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [batch, {expected[0]}, {expected[1]}, {expected[2]}] "
                             f"(NHWC, preprocessed) for this model; got shape {tuple(images.shape)}")
        x = self.patch_embed(images.astype(jnp.float32))
        b = x.shape[0]
        prefix = [jnp.broadcast_to(tok[...], (b, *tok.shape[1:]))
                  for tok in (self.cls_token, self.dist_token, self.reg_token) if tok is not None]
        if self.pos_embed is not None and c.no_embed_class:
            x = x + self.pos_embed[...]
        if prefix:
            x = jnp.concatenate([*prefix, x], axis=1)
        if self.pos_embed is not None and not c.no_embed_class:
            x = x + self.pos_embed[...]
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        return x

    def classify(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Final tokens `[B, T, C]` -> (logits `[B, K]`, pre-logits `[B, C]`)."""
        c = self.config
        if self.norm is not None:
            x = self.norm(x)
        if c.distillation_token:
            cls, dist = x[:, 0], x[:, 1]
            pre_logits = (cls + dist) / 2
            if self.head is None:
                return pre_logits, pre_logits
            return (self.head(cls) + self.head_dist(dist)) / 2, pre_logits
        if c.pool == "token":
            pooled = x[:, 0]
        else:
            tokens = x if c.pool_include_prefix else x[:, c.num_prefix_tokens:]
            if c.pool == "avg":
                pooled = tokens.mean(axis=1)
            elif c.pool == "max":
                pooled = tokens.max(axis=1)
            else:
                pooled = 0.5 * (tokens.max(axis=1) + tokens.mean(axis=1))
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        logits = self.head(pooled) if self.head is not None else pooled
        return logits, pooled

    # Forward ------------------------------------------------------------------------------

    def __call__(self, images: jax.Array, *, head_mask: jax.Array | None = None,
                 region_mask: jax.Array | None = None,
                 return_attention: bool = False) -> jax.Array | ViTOutput:
        """Forward pass.

        Args:
          images: float32 `[B, height, width, channels]`, normalised.
          head_mask: float `[L, H]`; 1 keeps a head, 0 prunes it, values between interpolate.
          region_mask: float, broadcastable to `[L, H, T, T]`; multiplies post-softmax attention
            (see `vit_jax_va.masks` for the six partial-pruning modes).
          return_attention: return a `ViTOutput` with every layer's attention.
        Returns:
          logits `[B, K]`, or `ViTOutput` when `return_attention`.
        """
        c = self.config
        if head_mask is not None:
            head_mask = jnp.asarray(head_mask)
            if head_mask.shape != (c.depth, c.num_heads):
                raise ValueError(f"head_mask must have shape [layers, heads] = "
                                 f"[{c.depth}, {c.num_heads}]; got {tuple(head_mask.shape)}")
        if region_mask is not None:
            full = (c.depth, c.num_heads, c.num_tokens, c.num_tokens)
            region_mask = jnp.asarray(region_mask)
            try:
                if jnp.broadcast_shapes(region_mask.shape, full) != full:
                    raise ValueError
            except ValueError:
                raise ValueError(f"region_mask must broadcast to [layers, heads, tokens, tokens] = "
                                 f"{list(full)}; got {tuple(region_mask.shape)}") from None
            region_mask = jnp.broadcast_to(region_mask, full)
        x = self.embed(images)
        attentions = []
        for layer, block in enumerate(self.blocks):
            x, attention = block(x,
                                 None if head_mask is None else head_mask[layer],
                                 None if region_mask is None else region_mask[layer])
            if return_attention:
                attentions.append(attention)
        logits, pre_logits = self.classify(x)
        if not return_attention:
            return logits
        return ViTOutput(logits=logits, attention=jnp.stack(attentions, axis=1), pre_logits=pre_logits)
