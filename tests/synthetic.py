"""Synthetic attention of known pattern families, for the pattern and autoencoder tests.

Each family is a rule "query patch (r, c) looks at target t(r, c)": logits fall off with the
squared distance from the target at a random sharpness, plus Gaussian logit noise; prefix
tokens get noise-only logits. Border queries whose target lies outside the grid still look at
the nearest patches, as a real head would.
"""

import numpy as np

FAMILIES = ("self", "left", "right", "up", "down", "row", "column", "uniform")


def family_attention(family, grid, prefix, rng, *, noise=0.3, sharpness=(1.0, 4.0)):
    """One post-softmax attention matrix `[tokens, tokens]` of `family`, float32."""
    rows, cols = grid
    qr, qc = np.divmod(np.arange(rows * cols), cols)
    dr = qr[None, :] - qr[:, None]  # key minus query
    dc = qc[None, :] - qc[:, None]
    beta = rng.uniform(*sharpness)
    shifts = {"self": (0, 0), "left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    if family in shifts:
        sr, sc = shifts[family]
        patch_logits = -beta * ((dr - sr) ** 2 + (dc - sc) ** 2)
    elif family == "row":
        patch_logits = -beta * dr ** 2.0
    elif family == "column":
        patch_logits = -beta * dc ** 2.0
    elif family == "uniform":
        patch_logits = np.zeros(dr.shape)
    else:
        raise ValueError(family)
    tokens = prefix + rows * cols
    logits = rng.normal(scale=noise, size=(tokens, tokens))
    logits[prefix:, prefix:] += patch_logits
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def family_dataset(per_family, grid, prefix, seed, **kwargs):
    """Attention `[per_family * 8, tokens, tokens]` and the family index of each matrix."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(FAMILIES)), per_family)
    attention = np.stack([family_attention(FAMILIES[i], grid, prefix, rng, **kwargs) for i in labels])
    return attention, labels
