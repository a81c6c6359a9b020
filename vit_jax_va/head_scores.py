"""Head importance scores that need no pruning pass (METHOD.md section 1, metrics).

- `taylor_importance`: Michel et al. (2019), "Are Sixteen Heads Really Better than One?":
  I_h = E_x |dL(x) / d m_h| at head mask m = 1, the first-order estimate of the loss change
  when head h is pruned. One vectorised backward pass gives every head's gradient.
- `head_confidence_per_image`: Voita et al. (2019), "Analyzing Multi-Head Self-Attention":
  the mean over queries of a head's largest attention weight, for every head and image of a
  model (`vit_jax_va.strength.head_confidence` computes it from given attention).

Shapes: N images, L layers, H heads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_jax_va import batching
from vit_jax_va.importance import unpruned_pass
from vit_jax_va.model import ViT
from vit_jax_va.reference import check_labels, reference_class


@functools.partial(jax.jit, static_argnums=0)
def _abs_head_mask_gradients(graphdef, state, images, labels):
    """|d loss / d head_mask| per image: `[L, H, B]`."""
    model = nnx.merge(graphdef, state)
    c = model.config

    def loss(head_mask, image, label):
        logits = model(image[None], head_mask=head_mask)[0]
        # The reference is read at m = 1, where the gradient is taken.
        return -jax.nn.log_softmax(logits)[reference_class(logits, label)]

    ones = jnp.ones((c.depth, c.num_heads), jnp.float32)
    # vmap of grad: every image gets its own gradient, still in one batched backward pass.
    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0))(ones, images, labels)
    return jnp.abs(grads).transpose(1, 2, 0)


@functools.partial(jax.jit, static_argnums=0)
def _confidence_chunk(graphdef, state, images):
    model = nnx.merge(graphdef, state)
    no_labels = jnp.full((images.shape[0],), -1, jnp.int32)
    return unpruned_pass(model, images, no_labels)[1]


def normalise_by_layer(scores) -> np.ndarray:
    """Divide each layer's scores by their L2 norm over heads (Michel et al., section 4.1).

    Args:
      scores: `[L, H, ...]`; the norm is taken over the head axis, separately for every
        layer and every trailing index.
    Returns:
      an array of the same shape; a layer whose scores are all zero stays zero.
    """
    scores = np.asarray(scores, np.float64)
    norm = np.sqrt(np.sum(scores**2, axis=1, keepdims=True))
    return np.divide(scores, norm, out=np.zeros_like(scores), where=norm > 0)


def taylor_importance(model: ViT, images, labels=None, normalise: bool = False,
                      per_image: bool = False, batch_size: int = 16) -> np.ndarray:
    """Taylor (gradient) importance of every head: |d cross-entropy / d head_mask| at m = 1.

    The absolute value is taken per image, then averaged over images (Michel et al. accumulate
    |gradient| over examples; the gradient of the summed loss would let images cancel).

    Args:
      model: a `ViT` with a classifier.
      images: float32 `[N, height, width, channels]`, preprocessed.
      labels: optional int `[N]`; the loss is of the label, else of the unpruned top-1 class.
      normalise: divide each layer's scores by their L2 norm over heads (`normalise_by_layer`).
      per_image: return every image's scores instead of their mean.
      batch_size: images per jitted call (the last chunk is padded; one compilation).
    Returns:
      float `[L, H]` (mean over images), or `[L, H, N]` when `per_image`; in nats per unit
      of head mask before normalisation.
    """
    images = np.asarray(images, np.float32)
    labels = check_labels(labels, images.shape[0], model.config.num_classes)
    graphdef, state = nnx.split(model)
    scores = batching.map_chunks(functools.partial(_abs_head_mask_gradients, graphdef, state),
                                 [images, labels], batch_size, fills=[0, -1], image_axes=-1)
    if not per_image:
        scores = scores.mean(axis=-1)
    return normalise_by_layer(scores) if normalise else scores


def head_confidence_per_image(model: ViT, images, batch_size: int = 16) -> np.ndarray:
    """Voita et al.'s confidence of every head of the unpruned model: `[L, H, N]` in [0, 1].

    For each query, the largest attention weight it gives any key; averaged over the patch
    queries. Prefix-token queries (CLS, distillation, registers) are left out, as METHOD.md
    leaves out the CLS query; keys include every token. The layers run in a scan that keeps
    only this statistic, never the `[N, L, H, T, T]` attention.
    """
    graphdef, state = nnx.split(model)
    return batching.map_chunks(functools.partial(_confidence_chunk, graphdef, state),
                               [np.asarray(images, np.float32)], batch_size, image_axes=-1)
