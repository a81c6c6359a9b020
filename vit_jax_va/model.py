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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vit_jax_va.config import ViTConfig
from vit_jax_va.positions import relative_position_index, relative_table_size, rotary_embedding, rotate

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


def _linear(d_in: int, d_out: int, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=bias, kernel_init=_linear_init, rngs=rngs)


def _layer_norm(config: ViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(config.width, epsilon=config.layer_norm_eps, rngs=rngs)


def _rows(x: jax.Array) -> jax.Array:
    """`[..., C]` -> `[N, C]`: XLA's CPU dot on a 2-D operand was ~1.7x faster than on
    `[B, T, C]` (vit_tiny, 48 sequences), so every dense layer runs on flattened rows."""
    return x.reshape(-1, x.shape[-1])


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU in torch's formula, 0.5 x (1 + erf(x / sqrt 2)): timm's `nn.GELU`. The
    tanh approximation breaks parity at ~1e-3; jax's erfc form was ~13% slower per MLP."""
    return 0.5 * x * (1 + jax.lax.erf(x * jnp.float32(math.sqrt(0.5))))


def gelu_tanh(x: jax.Array) -> jax.Array:
    """GELU's tanh approximation, torch's `gelu(approximate='tanh')` (SigLIP)."""
    return jax.nn.gelu(x, approximate=True)


def quick_gelu(x: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x): OpenAI CLIP's activation (timm `QuickGELU`)."""
    return x * jax.nn.sigmoid(jnp.float32(1.702) * x)


# `ViTConfig.act` -> the function.
ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh, "quick_gelu": quick_gelu}


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


def _softmax_attention(q: jax.Array, k: jax.Array, head_dim: int, bias: jax.Array | None = None) -> jax.Array:
    """Post-softmax attention `[B, R, T]` of queries `[B, R, D]` over keys `[B, T, D]`, with an
    optional `[1, R, T]` bias on the logits. timm scales q before the product; doing the same
    keeps rounding identical."""
    logits = (q * jnp.float32(head_dim ** -0.5)) @ k.swapaxes(-1, -2)
    return jax.nn.softmax(logits if bias is None else logits + bias, axis=-1)


class Attention(nnx.Module):
    """Multi-head self-attention, computed head by head, with head and region masks.

    Layout: one fused query/key/value matmul on flattened rows `[B*T, C]`, sliced per head into
    `[B, T, D]`; per head the `q k^T` and `a v` products (batched over images); the heads'
    outputs concatenated into one output-projection matmul. Measured on a 2-core CPU with the
    demo model (16 images, `ablate_heads` in all six modes) against one matmul per head and
    against the earlier `[B, T, H, D]` einsums: 2.30 s per call against 2.80 s and 2.91 s,
    compile 8.6 s against 12.3 s and 9.1 s; `benchmarks/ablation.py` (vit_tiny) ran at the
    same ~105 GFLOP/s in all three. Per-head arrays are what the sweep
    needs: it replaces one head's contribution at a time.

    The stages are public so that the sweep can reuse them (`vit_jax_va.importance`): `heads`
    (every head's attention and values), `project` (the output projection of the heads'
    outputs), `head_projection` (each head's slice of the projection kernel).
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = _linear(config.width, 3 * config.width, config.qkv_bias, rngs)
        norm = lambda: nnx.LayerNorm(config.head_dim, epsilon=config.layer_norm_eps, rngs=rngs)  # noqa: E731
        self.q_norm = norm() if config.qk_norm else None
        self.k_norm = norm() if config.qk_norm else None
        if config.rel_pos_bias:
            self.relative_position_bias_table = nnx.Param(_linear_init(
                rngs.params(), (relative_table_size(config.grid, config.class_token), config.num_heads)))
            # The index is computed from these: static, not state.
            self.grid, self.class_token = tuple(config.grid), config.class_token
        else:
            self.relative_position_bias_table = None
        # EVA-02's rotary embedding: its settings are static, the tables come from the grid.
        self.rope = ((tuple(config.grid), config.head_dim, config.rope_ref_grid, config.rope_temperature,
                      config.rope_offset, config.rope_xy, config.rope_rotate_half) if config.rope else None)
        self.num_prefix_tokens = config.num_prefix_tokens
        self.proj = _linear(config.width, config.width, config.proj_bias, rngs)

    def _rotated(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
        """The rotary embedding on the patch rows of `x` `[B, R, D]` (R <= T); prefix rows stay."""
        p = self.num_prefix_tokens
        if x.shape[1] <= p:
            return x
        turned = rotate(x[:, p:], sin[:x.shape[1] - p], cos[:x.shape[1] - p], self.rope[-1])
        return jnp.concatenate([x[:, :p], turned], axis=1) if p else turned

    def heads(self, x: jax.Array, rows: int | None = None,
              region_mask: jax.Array | None = None) -> list[tuple[jax.Array, jax.Array]]:
        """Attention weights and values of every head.

        Args:
          x: `[B, T, C]` normalised tokens.
          rows: compute the attention of the first R queries only (all T when None); they
            still attend to every key.
          region_mask: optional `[H, T, T]` multiplier of the post-softmax weights.
        Returns:
          per head, (attention `[B, R, T]` (rows: queries, columns: keys), values `[B, T, D]`).
        """
        b, t, _ = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        qkv = self.qkv(_rows(x)).reshape(b, t, 3, heads, head_dim)
        bias = None
        if self.relative_position_bias_table is not None:
            index = relative_position_index(self.grid, self.class_token)[slice(rows)]
            bias = self.relative_position_bias_table[...][index]  # [R, T, H]
        if self.rope is not None:
            grid, dim, ref, temperature, offset, xy, half = self.rope
            sin, cos = (jnp.asarray(t) for t in rotary_embedding(
                grid, dim, ref_grid=ref, temperature=temperature, offset=offset, xy=xy, rotate_half=half))

        out = []
        for h in range(heads):
            q, k, v = qkv[:, :, 0, h], qkv[:, :, 1, h], qkv[:, :, 2, h]
            if rows is not None:
                q = q[:, :rows]
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            if self.rope is not None:
                q, k = self._rotated(q, sin, cos), self._rotated(k, sin, cos)
            attention = _softmax_attention(q, k, head_dim, None if bias is None else bias[None, :, :, h])
            if region_mask is not None:
                attention = attention * region_mask[h, :q.shape[1]][None]
            out.append((attention, v))
        return out

    def head_projection(self) -> jax.Array:
        """`[H, D, C]`: head h reaches the projection output only through these kernel rows."""
        return self.proj.kernel[...].reshape(self.num_heads, self.head_dim, -1)

    def project(self, head_outputs: list[jax.Array], head_mask: jax.Array | None = None) -> jax.Array:
        """Heads' outputs (each `[B, R, D]`), scaled by `head_mask` `[H]`, through the output
        projection: `[B, R, C]`."""
        b, r, _ = head_outputs[0].shape
        heads = jnp.concatenate([o if head_mask is None else o * head_mask[h]
                                 for h, o in enumerate(head_outputs)], axis=-1)
        return self.proj(_rows(heads)).reshape(b, r, -1)


def _hidden_norm(config: ViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm | None:
    """The LayerNorm over an MLP's hidden units (`mlp_norm`), or None."""
    return (nnx.LayerNorm(config.mlp_hidden, epsilon=config.layer_norm_eps, rngs=rngs)
            if config.mlp_norm else None)


class Mlp(nnx.Module):
    """fc2(norm(act(fc1 x))), with the config's activation (`norm` only with `mlp_norm`); biases
    as `proj_bias` unless `bias` says."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs, bias: bool | None = None,
                 norm: bool = True):
        bias = config.proj_bias if bias is None else bias
        self.act = config.act
        self.fc1 = _linear(config.width, config.mlp_hidden, bias, rngs)
        self.norm = _hidden_norm(config, rngs) if norm else None
        self.fc2 = _linear(config.mlp_hidden, config.width, bias, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[..., C]` -> `[..., C]`."""
        hidden = ACTIVATIONS[self.act](self.fc1(_rows(x)))
        return self.fc2(hidden if self.norm is None else self.norm(hidden)).reshape(x.shape)


class SwiGLU(nnx.Module):
    """fc2(norm(silu(fc1_g x) * fc1_x x)): the gated MLP of EVA-02 and DINOv2 giant (timm
    `SwiGLU`; `norm` only with `mlp_norm`)."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        bias, hidden = config.proj_bias, config.mlp_hidden
        self.fc1_g = _linear(config.width, hidden, bias, rngs)
        self.fc1_x = _linear(config.width, hidden, bias, rngs)
        self.norm = _hidden_norm(config, rngs)
        self.fc2 = _linear(hidden, config.width, bias, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """`[..., C]` -> `[..., C]`."""
        rows = _rows(x)
        hidden = jax.nn.silu(self.fc1_g(rows)) * self.fc1_x(rows)
        return self.fc2(hidden if self.norm is None else self.norm(hidden)).reshape(x.shape)


class AttentionPool(nnx.Module):
    """Attention pooling by one learned latent query (SigLIP's 'map' head; timm
    `AttentionPoolLatent` with one latent): the latent attends to the tokens with the blocks'
    number of heads, then a projection and a residual MLP: `[B, T, C]` -> `[B, C]`. Part of
    the classifier: the sweep neither prunes nor shows its attention."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.latent = nnx.Param(_linear_init(rngs.params(), (1, 1, config.width)))
        self.q = _linear(config.width, config.width, True, rngs)
        self.kv = _linear(config.width, 2 * config.width, True, rngs)
        self.proj = _linear(config.width, config.width, True, rngs)
        self.norm = _layer_norm(config, rngs)
        self.mlp = Mlp(config, rngs=rngs, bias=True, norm=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, c = x.shape
        q = self.q(self.latent[...][0]).reshape(1, self.num_heads, self.head_dim)
        kv = self.kv(_rows(x)).reshape(b, t, 2, self.num_heads, self.head_dim)
        heads = [_softmax_attention(jnp.broadcast_to(q[:, h][None], (b, 1, self.head_dim)), kv[:, :, 0, h],
                                    self.head_dim) @ kv[:, :, 1, h] for h in range(self.num_heads)]
        pooled = self.proj(jnp.concatenate(heads, axis=-1)[:, 0])
        return pooled + self.mlp(self.norm(pooled))


class Block(nnx.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x)).

    `heads` and `finish` are the two halves around the per-head attention, so that the sweep
    can change the heads' contribution between them (`vit_jax_va.importance`).
    """

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config, rngs)
        self.attn = Attention(config, rngs=rngs)
        self.ls1 = LayerScale(config.width) if config.layer_scale else None
        self.norm2 = _layer_norm(config, rngs)
        self.mlp = SwiGLU(config, rngs=rngs) if config.swiglu else Mlp(config, rngs=rngs)
        self.ls2 = LayerScale(config.width) if config.layer_scale else None

    def heads(self, x: jax.Array, rows: int | None = None,
              region_mask: jax.Array | None = None) -> list[tuple[jax.Array, jax.Array]]:
        """Per head, attention `[B, R, T]` and values `[B, T, D]` of the residual stream `x`
        `[B, T, C]` (`Attention.heads`)."""
        return self.attn.heads(self.norm1(x), rows, region_mask)

    def finish(self, x: jax.Array, attn_out: jax.Array) -> jax.Array:
        """The rest of the block after the attention projection: residual attention branch,
        then residual MLP. `x`, `attn_out` and the result are `[B, R, C]`."""
        x = x + (self.ls1(attn_out) if self.ls1 is not None else attn_out)
        out = self.mlp(self.norm2(x))
        return x + (self.ls2(out) if self.ls2 is not None else out)

    def __call__(self, x: jax.Array, head_mask: jax.Array | None = None,
                 region_mask: jax.Array | None = None,
                 rows: int | None = None) -> tuple[jax.Array, jax.Array]:
        """`[B, T, C]` -> (`[B, R, C]`, attention `[B, H, R, T]`); masks `[H]`, `[H, T, T]`.

        With `rows` (the last block under class-token pooling) only the first R tokens are
        computed: they still attend to every key and value, but nothing after the last
        attention mixes tokens, so the other rows never reach the classifier.
        """
        heads = self.heads(x, rows, region_mask)
        attn_out = self.attn.project([a @ v for a, v in heads], head_mask)
        r = attn_out.shape[1]
        return self.finish(x[:, :r], attn_out), jnp.stack([a for a, _ in heads], axis=1)


class ViT(nnx.Module):
    """Vision Transformer, timm-compatible. See the module docstring for shapes and masks.

    Call as `model(images, head_mask=None, region_mask=None, return_attention=False)` with
    `images` float32 `[B, height, width, channels]` already normalised (`vit_jax_va.preprocess`).
    The stages are also callable one by one (`embed`, `blocks[l]` and its halves, `classify`),
    so that a sweep can reuse the residual stream before a pruned layer and change one head's
    contribution inside a block: there is one forward pass, and the sweep is made of its parts.
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
        self.attn_pool = AttentionPool(c, rngs=rngs) if c.pool == "map" else None
        self.fc_norm = _layer_norm(c, rngs) if c.final_norm and c.fc_norm else None
        self.head = (nnx.Linear(c.width, c.num_classes, kernel_init=_linear_init,
                                rngs=rngs) if c.num_classes else None)
        self.head_dist = (nnx.Linear(c.width, c.num_classes, kernel_init=_linear_init,
                                     rngs=rngs) if c.num_classes and c.distillation_token else None)

    # Stages -------------------------------------------------------------------------------

    @property
    def classifier_rows(self) -> int | None:
        """How many leading tokens `classify` reads after the last block (None: all of them)."""
        c = self.config
        return 1 + int(c.distillation_token) if c.pool == "token" else None

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
            if c.pool == "map":
                pooled = self.attn_pool(tokens)
            elif c.pool == "avg":
                pooled = tokens.mean(axis=1)
            elif c.pool == "max":
                pooled = tokens.max(axis=1)
            else:
                pooled = 0.5 * (tokens.max(axis=1) + tokens.mean(axis=1))
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        logits = self.head(pooled) if self.head is not None else pooled
        return logits, pooled

    def patch_tokens(self, x: jax.Array) -> jax.Array:
        """Final tokens `[B, T, C]` -> the patch tokens after the final norm `[B, P, C]` (what a
        dense-prediction head reads, e.g. DINOv2's `x_norm_patchtokens`)."""
        if self.norm is not None:
            x = self.norm(x)
        return x[:, self.config.num_prefix_tokens:]

    # Forward ------------------------------------------------------------------------------

    def encode(self, images: jax.Array, *, head_mask: jax.Array | None = None,
               region_mask: jax.Array | None = None, rows: int | None = None
               ) -> tuple[jax.Array, list[jax.Array]]:
        """Images -> (final tokens `[B, R, C]`, every layer's attention `[B, H, R_l, T]`).

        The masks are those of `__call__`. With `rows` the last block computes only the first
        R tokens (`Block(..., rows=)`; `classifier_rows` is what `classify` reads), else all T.
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
                                 None if region_mask is None else region_mask[layer],
                                 rows=rows if layer == c.depth - 1 else None)
            attentions.append(attention)
        return x, attentions

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
        # Without attention to return, the last block computes only the rows the classifier
        # reads (`classifier_rows`).
        x, attentions = self.encode(images, head_mask=head_mask, region_mask=region_mask,
                                    rows=None if return_attention else self.classifier_rows)
        logits, pre_logits = self.classify(x)
        if not return_attention:
            return logits
        return ViTOutput(logits=logits, attention=jnp.stack(attentions, axis=1), pre_logits=pre_logits)
