"""Head importance over a data set, accumulated while streaming batches (METHOD.md section 5).

`ImportanceAccumulator.update` adds one `HeadAblation` batch to running sums (float64, so the
order of batches does not change the result beyond rounding); `result()` turns them into
means per head, per class and per prune mode; `save`/`load` write and read them as npz so that
a long sweep can resume.

Shapes: M modes, L layers, H heads, K classes.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vit_jax_va.importance import HeadAblation

_METRICS = ("prob", "correct", "loss", "kl")
_BASELINE_METRICS = ("prob", "correct", "loss")


@dataclasses.dataclass(frozen=True)
class ImportanceSummary:
    """Means over the images seen so far. Float64 numpy arrays.

    Attributes:
      modes: prune modes, in the order of the first axis.
      count: number of images; class_count: `[K]` images per class.
      prob, accuracy, loss, kl: `[M, L, H]` mean reference-class probability, top-1 accuracy,
        cross-entropy (nats) and KL(unpruned || pruned) (nats) after pruning each head.
      accuracy_drop: `[M, L, H]` baseline_accuracy - accuracy.
      baseline_prob, baseline_accuracy, baseline_loss: scalars for the unpruned model.
      class_prob, class_accuracy, class_loss, class_kl, class_accuracy_drop: `[M, L, H, K]`, the
        same per class (the label, else the unpruned prediction); NaN for unseen classes.
      class_baseline_prob, class_baseline_accuracy, class_baseline_loss: `[K]`.
      head_confidence: `[L, H]` mean confidence of each unpruned head.
    """

    modes: tuple[str, ...]
    count: int
    class_count: np.ndarray
    prob: np.ndarray
    accuracy: np.ndarray
    loss: np.ndarray
    kl: np.ndarray
    accuracy_drop: np.ndarray
    baseline_prob: float
    baseline_accuracy: float
    baseline_loss: float
    class_prob: np.ndarray
    class_accuracy: np.ndarray
    class_loss: np.ndarray
    class_kl: np.ndarray
    class_accuracy_drop: np.ndarray
    class_baseline_prob: np.ndarray
    class_baseline_accuracy: np.ndarray
    class_baseline_loss: np.ndarray
    head_confidence: np.ndarray


class ImportanceAccumulator:
    """Running sums of `ablate_heads` results over batches of images.

    Args:
      modes: the prune modes of the results that will be added (same order).
      num_layers, num_heads, num_classes: the model's L, H and K.
    """

    def __init__(self, modes: tuple[str, ...], num_layers: int, num_heads: int,
                 num_classes: int):
        self.modes = tuple(modes)
        m, l, h, k = len(self.modes), num_layers, num_heads, num_classes
        self.sums: dict[str, np.ndarray] = {"count": np.zeros((), np.int64),
                                            "class_count": np.zeros((k,), np.int64),
                                            "head_confidence": np.zeros((l, h))}
        for name in _METRICS:
            self.sums[name] = np.zeros((m, l, h))
            self.sums[f"class_{name}"] = np.zeros((m, l, h, k))
        for name in _BASELINE_METRICS:
            self.sums[f"baseline_{name}"] = np.zeros(())
            self.sums[f"class_baseline_{name}"] = np.zeros((k,))

    def update(self, result: HeadAblation, labels=None) -> None:
        """Add a batch. Per-class sums group images by `labels` `[B]` if given, else by the
        result's reference class."""
        if tuple(result.modes) != self.modes:
            raise ValueError(f"result modes {result.modes} differ from the accumulator's "
                             f"{self.modes}")
        expected = self.sums["prob"].shape
        if result.prob.shape[:3] != expected:
            raise ValueError(f"result has [modes, layers, heads] = {result.prob.shape[:3]}, "
                             f"the accumulator {expected}")
        classes = np.asarray(result.reference if labels is None else labels)
        num_classes = self.sums["class_count"].shape[0]
        one_hot = (classes[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)
        self.sums["count"] += classes.shape[0]
        self.sums["class_count"] += one_hot.sum(axis=0).astype(np.int64)
        self.sums["head_confidence"] += np.asarray(result.head_confidence, np.float64).sum(-1)
        for name in _METRICS:
            values = np.asarray(getattr(result, name), np.float64)
            self.sums[name] += values.sum(axis=-1)
            self.sums[f"class_{name}"] += values @ one_hot
        for name in _BASELINE_METRICS:
            values = np.asarray(getattr(result, f"baseline_{name}"), np.float64)
            self.sums[f"baseline_{name}"] += values.sum()
            self.sums[f"class_baseline_{name}"] += values @ one_hot

    def result(self) -> ImportanceSummary:
        """Means of everything added so far (see `ImportanceSummary`)."""
        s = self.sums
        count = int(s["count"])
        if count == 0:
            raise ValueError("no images were added")
        per_class = np.where(s["class_count"] > 0, s["class_count"], np.nan)
        means = {name: s[name] / count for name in _METRICS}
        class_means = {name: s[f"class_{name}"] / per_class for name in _METRICS}
        baseline = {name: float(s[f"baseline_{name}"]) / count for name in _BASELINE_METRICS}
        class_baseline = {name: s[f"class_baseline_{name}"] / per_class
                          for name in _BASELINE_METRICS}
        return ImportanceSummary(
            modes=self.modes, count=count, class_count=s["class_count"].copy(),
            prob=means["prob"], accuracy=means["correct"], loss=means["loss"], kl=means["kl"],
            accuracy_drop=baseline["correct"] - means["correct"],
            baseline_prob=baseline["prob"], baseline_accuracy=baseline["correct"],
            baseline_loss=baseline["loss"],
            class_prob=class_means["prob"], class_accuracy=class_means["correct"],
            class_loss=class_means["loss"], class_kl=class_means["kl"],
            class_accuracy_drop=class_baseline["correct"] - class_means["correct"],
            class_baseline_prob=class_baseline["prob"],
            class_baseline_accuracy=class_baseline["correct"],
            class_baseline_loss=class_baseline["loss"],
            head_confidence=s["head_confidence"] / count)

    def save(self, path: str | os.PathLike) -> None:
        """Write the running sums to an npz file (exact: a loaded accumulator continues as if
        it had never stopped)."""
        np.savez(path, modes=np.array(self.modes), **self.sums)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ImportanceAccumulator":
        with np.load(path) as data:
            num_modes, num_layers, num_heads, num_classes = data["class_prob"].shape
            accumulator = cls(tuple(str(m) for m in data["modes"]), num_layers, num_heads,
                              num_classes)
            missing = sorted(set(accumulator.sums) - set(data.files))
            if missing:
                raise ValueError(f"{os.fspath(path)} lacks {missing}")
            for name in accumulator.sums:
                accumulator.sums[name] = data[name].astype(accumulator.sums[name].dtype)
        return accumulator


def head_importance(summary: ImportanceSummary, metric: str, prune_mode: str = "head"
                    ) -> np.ndarray:
    """A `[L, H]` importance score from a summary, larger = pruning hurts more.

    metric: "prob" (drop in mean reference-class probability), "accuracy" (accuracy drop),
    "loss" (increase of the mean cross-entropy), "kl" (mean KL(unpruned || pruned)) or
    "confidence" (head confidence; `prune_mode` is then ignored).
    """
    if metric == "confidence":
        return summary.head_confidence
    if prune_mode not in summary.modes:
        raise KeyError(f"prune_mode {prune_mode!r} not in the summary's {summary.modes}")
    m = summary.modes.index(prune_mode)
    scores = {"prob": lambda: summary.baseline_prob - summary.prob[m],
              "accuracy": lambda: summary.accuracy_drop[m],
              "loss": lambda: summary.loss[m] - summary.baseline_loss,
              "kl": lambda: summary.kl[m]}
    if metric not in scores:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(scores) + ['confidence']}")
    return scores[metric]()
