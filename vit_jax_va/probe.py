"""A linear probe: a classifier fitted on a backbone's pooled features, so that the class metrics
of the method (probability of the reference class, accuracy, loss, Taylor) apply to a backbone
(DINOv2, CLIP and SigLIP towers) too.

`fit_probe` extracts the pooled features of a labelled data set (the model's own pre-logits:
what its classifier reads), fits a multinomial logistic regression (scikit-learn, on standardised
features) on a seeded split, reports the held-out accuracy, and returns the model with that
classifier as its head: the standardisation is folded into the head's weights, so the new
model's logits are the regression's decision function.

Shapes: N images, C width, K classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vit_jax_va.data import ImageDataset
from vit_jax_va.model import ViT


@dataclasses.dataclass(frozen=True)
class Probe:
    """What `fit_probe` made.

    Attributes:
      model: the backbone with the fitted classifier as its head (`num_classes` = K).
      train_accuracy, heldout_accuracy: top-1 accuracy on the fitting and the held-out images.
      chance: the held-out share of the most common training class (a classifier that always
        says it scores this).
      num_train, num_heldout: images in each part.
    """

    model: ViT
    train_accuracy: float
    heldout_accuracy: float
    chance: float
    num_train: int
    num_heldout: int


@nnx.jit
def _features(model: ViT, images: jax.Array) -> jax.Array:
    return model.classify(model.encode(images, rows=model.classifier_rows)[0])[1]


def pooled_features(model: ViT, dataset: ImageDataset, batch_size: int = 32,
                    log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The model's pooled features `[N, C]` (what its classifier reads) and labels `[N]` of the
    data set's usable images."""
    if dataset.labels is None:
        raise ValueError("the images have no labels: a probe needs labelled images (class "
                         "sub-folders or an IDX set)")
    features, labels = [], []
    for batch in dataset.batches(model.config, batch_size):
        features.append(np.asarray(_features(model, jnp.asarray(batch.images))))
        labels.append(batch.labels)
        if log is not None:
            log(f"features of {sum(len(f) for f in features)} / {len(dataset)} images")
    return np.concatenate(features), np.concatenate(labels)


def fit_probe(model: ViT, dataset: ImageDataset, *, holdout: float = 0.2, C: float = 1.0, seed: int = 0,
              batch_size: int = 32, max_iter: int = 2000, tol: float = 1e-4,
              log: Callable[[str], None] | None = None) -> Probe:
    """Fit a linear classifier on `model`'s pooled features of the labelled `dataset`.

    Args:
      model: any `ViT`; a classifier it has is replaced.
      dataset: labelled images; every class in `dataset.class_names` becomes a logit.
      holdout: the share of images (seeded shuffle) kept out of the fit to measure accuracy.
      C: inverse L2 regularisation strength of the logistic regression.
      max_iter, tol: the solver's (lbfgs) iteration limit and tolerance.
    """
    from sklearn.linear_model import LogisticRegression

    if not 0 < holdout < 1:
        raise ValueError(f"holdout must be in (0, 1); got {holdout}")
    features, labels = pooled_features(model, dataset, batch_size, log)
    num_classes = len(dataset.class_names) if dataset.class_names else int(labels.max()) + 1
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(round(len(labels) * (1 - holdout)))
    train, heldout = order[:cut], order[cut:]
    if len(heldout) == 0 or len(np.unique(labels[train])) < 2:
        raise ValueError(f"{len(labels)} images are too few to fit on two or more classes and hold out "
                         f"{holdout:.0%}")
    # Standardised as scikit-learn's StandardScaler does (a constant feature is left unscaled).
    fitted = features[train].astype(np.float64)
    mean, std = fitted.mean(axis=0), fitted.std(axis=0)
    std[std < 10 * np.finfo(np.float64).eps * np.abs(mean).clip(1)] = 1.0
    regression = LogisticRegression(C=C, max_iter=max_iter, tol=tol).fit((features[train] - mean) / std, labels[train])
    weight, bias = np.zeros((num_classes, features.shape[1])), np.zeros(num_classes)
    coef, intercept = regression.coef_, regression.intercept_
    if len(regression.classes_) == 2 and coef.shape[0] == 1:  # one logit for two classes
        coef, intercept = np.stack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    weight[regression.classes_], bias[regression.classes_] = coef, intercept
    # Classes absent from the fit can never win.
    absent = np.setdiff1d(np.arange(num_classes), regression.classes_)
    bias[absent] = -1e4
    # Fold the standardisation into the head: W (f - m) / s + b = (W / s) f + (b - W m / s).
    weight, bias = weight / std, bias - (weight / std) @ mean
    probed = with_head(model, weight.astype(np.float32), bias.astype(np.float32), dataset.class_names)

    def accuracy(index):
        return float(np.mean(np.argmax(features[index] @ weight.T + bias, axis=1) == labels[index]))

    counts = np.bincount(labels[train], minlength=num_classes)
    return Probe(model=probed, train_accuracy=accuracy(train), heldout_accuracy=accuracy(heldout),
                 chance=float(np.mean(labels[heldout] == np.argmax(counts))), num_train=len(train),
                 num_heldout=len(heldout))


def with_head(model: ViT, weight: np.ndarray, bias: np.ndarray,
              class_names: tuple[str, ...] | None = None) -> ViT:
    """`model`'s weights with a linear classifier `weight` `[K, C]`, `bias` `[K]` as its head (a
    distilled model gets it on both heads, so that it reads the averaged tokens)."""
    num_classes = weight.shape[0]
    config = model.config.replace(num_classes=num_classes, class_names=tuple(class_names) if class_names else None)
    target = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(target)
    pure = nnx.to_pure_dict(state)
    source = nnx.to_pure_dict(nnx.state(model))
    head = {"kernel": jnp.asarray(weight.T), "bias": jnp.asarray(bias)}
    for key in pure:
        if key in ("head", "head_dist"):
            pure[key] = dict(head)
        else:
            pure[key] = source[key]
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)
