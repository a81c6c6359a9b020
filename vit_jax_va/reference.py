"""The reference class of an image: the class whose probability pruning is measured on.

It is the image's label when one is given, else the unpruned model's top-1 prediction
(METHOD.md section 1). Labels travel as int32 `[N]` with -1 for "no label", so that labelled
and unlabelled images share one jitted computation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def check_labels(labels, n: int, num_classes: int) -> np.ndarray:
    """Labels as int32 `[n]` (-1 everywhere when `labels` is None); refuses other shapes, dtypes
    and classes outside `[0, num_classes)`."""
    if labels is None:
        return np.full((n,), -1, np.int32)
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape [{n}]; got {labels.dtype} "
                         f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    return labels.astype(np.int32)


def reference_class(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """int32 `[...]`: `labels` where >= 0, else the top-1 class of the unpruned `logits`
    `[..., K]`. An integer, so it carries no gradient (Taylor importance differentiates the
    loss of it at head mask 1)."""
    return jnp.where(labels >= 0, labels, jnp.argmax(logits, axis=-1).astype(jnp.int32))
