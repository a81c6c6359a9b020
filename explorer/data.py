"""What the views show, read from a results store (`vit_jax_va.store`) and indexed by a selection.

`RunData` opens one run and answers the questions the views ask ("the metric of every head for
this image", "the n-hop profile of these heads") with plain numpy arrays, so that the views stay
thin and the answers can be tested without a browser. It computes no statistics of its own
beyond averaging the stored per-image values over a scope (an image, a class, the run): every
number is read from the store, or (for the one selected image, when the store does not hold it)
computed live by the library functions the sweep uses (`explorer.live`).

One `RunData` per run directory per process (`explorer.app.load_run`), shared read-only by every
browser session; the large arrays stay memory-mapped.

Shapes: N images, L layers, H heads, M prune modes, T tokens, K classes.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import threading
from pathlib import Path

import numpy as np

from vit_jax_va import store
from vit_jax_va.masks import PRUNE_MODES

# Figure titles shorten image ids and class names to these lengths, so that a title stays on
# one or two lines above its figure (`explorer.titles`: they wrap there, in any font).
TITLE_ID_CHARS = 12
TITLE_CLASS_CHARS = 10


def _keep_end(text: str, chars: int) -> str:
    """`text`, or "…" and its last `chars - 1` characters (a file name's end tells most)."""
    return text if len(text) <= chars else "…" + text[-(chars - 1):]

# Metrics of B1 (METHOD.md section 1). The first eight come from pruning each head alone (the
# last four of those measure the representation, not the prediction); Taylor and confidence
# need no pruning pass.
METRICS = {
    "probability": "probability of the reference class after pruning the head",
    "correct": "top-1 correct (accuracy over the scope) after pruning the head",
    "loss": "cross-entropy increase (nats) when the head is pruned",
    "kl": "KL(unpruned || pruned) of the predictions (nats)",
    "feature_cos": "1 - cosine similarity of the pooled features, pruned vs unpruned",
    "feature_rel_l2": "relative change |f_pruned - f| / |f| of the pooled features",
    "patch_cos": "1 - cosine similarity of the last layer's patch tokens (mean over patches), pruned vs unpruned",
    "patch_rel_l2": "relative change of the last layer's patch tokens (mean over patches)",
    "taylor": "Taylor importance |dL/dm_h| at m = 1 (Michel et al. 2019)",
    "confidence": "head confidence: mean max attention weight of the patch queries (Voita et al. 2019)",
}
PRUNED_METRICS = ("probability", "correct", "loss", "kl", "feature_cos", "feature_rel_l2",
                  "patch_cos", "patch_rel_l2")
# The metrics of the prediction, which a model without a classifier (a backbone) cannot have.
CLASS_METRICS = ("probability", "correct", "loss", "kl", "taylor")
PATCH_METRICS = ("patch_cos", "patch_rel_l2")
NO_CLASSIFIER = ("This model has no classifier (a backbone): the metrics of the prediction "
                 "(probability, accuracy, loss, KL, Taylor) and B3's top-5 need one, so importance "
                 "is what pruning a head does to the features. `vit-va probe MODEL --data LABELLED "
                 "--out CKPT` fits a linear classifier; sweep that for the class metrics.")
SCOPES = ("image", "run", "class")
SPACES = ("patch", "cls")
MODE_LABELS = {"none": "none", "head": "whole head", "cls": "CLS row + column",
               "patch": "patch -> patch", "cross": "CLS <-> patch", "cls_cls": "CLS -> CLS"}


@dataclasses.dataclass(frozen=True)
class HeadValues:
    """A metric for every head: `values` `[L, H]`, `baseline` (the unpruned value, or None)."""

    metric: str
    scope: str
    values: np.ndarray
    baseline: float | None
    label: str


class RunData:
    """One results store, opened for the explorer. Read-only after construction."""

    def __init__(self, path: str | Path):
        self.run = store.open_run(path)
        self._stored_attention = functools.lru_cache(maxsize=16)(self._read_attention)
        self.path = self.run.path
        self.name = self.path.name
        c = self.config = self.run.config
        self.depth, self.num_heads = c.depth, c.num_heads
        self.num_heads_total = c.depth * c.num_heads
        self.grid = tuple(c.grid)
        self.num_prefix = int(c.num_prefix_tokens)
        self.num_tokens = int(c.num_tokens)
        self.class_names = list(self.run.class_names)

        images = self.run.arrays("images")
        self.ids = np.asarray(images["ids"]).astype(str)
        self.id_index = {id_: i for i, id_ in enumerate(self.ids)}
        self.labels = np.asarray(images["labels"])
        imp = self.run.arrays("importance")
        # A backbone's run has no prediction and no metric of it (`NO_CLASSIFIER`).
        self.has_classifier = "prob" in imp
        self.prediction = (np.asarray(images["prediction"]) if self.has_classifier
                           else np.full(len(self.labels), -1, np.int64))
        self.probs = np.asarray(images["probs"]) if self.has_classifier else None
        self.overview_xy = np.asarray(images["overview_xy"], np.float64)
        self.thumbnails = images["thumbnails"]
        self.num_images = len(self.ids)
        # The class that decides "which class" for a class scope: the label, or the prediction
        # for unlabelled images.
        self.image_class = np.where(self.labels >= 0, self.labels, self.prediction)

        self.modes = tuple(str(m) for m in np.asarray(imp["modes"]))
        self.importance = imp
        # The metrics this run has, in `METRICS` order, and the one the page opens on.
        self.metrics = [m for m in METRICS if (self.has_classifier or m not in CLASS_METRICS)
                        and (m not in PATCH_METRICS or m in imp)]
        self.default_metric = "probability" if self.has_classifier else "feature_cos"
        if self.has_classifier:
            self.reference = np.asarray(imp["reference"])
            self.baseline = {k: np.asarray(imp[f"baseline_{k}"]) for k in ("prob", "correct", "loss")}
            self.baseline_top5 = (np.asarray(imp["baseline_top5_classes"]),
                                  np.asarray(imp["baseline_top5_probs"]))
            self.taylor = np.asarray(imp["taylor"])  # [L, H, N]
        # The scopes: "class" needs a label or a prediction.
        self.scopes = [s for s in SCOPES if s != "class" or (self.image_class >= 0).any()]
        self.strength = {k: np.asarray(v) for k, v in self.run.arrays("strength").items()}
        self.curve = {k: np.asarray(v) for k, v in self.run.arrays("curve").items()}
        self.patterns = {}
        for space in SPACES:
            try:
                arrays = self.run.arrays(f"patterns/{space}")
            except store.RunError:
                continue
            # Items themselves stay on disk; the map needs positions, clusters and heads only.
            self.patterns[space] = {k: (v if k == "items" else np.asarray(v))
                                    for k, v in arrays.items()}
        self.kept = set(self.run.kept_attention())
        self._lock = threading.Lock()
        self._density: dict = {}
        self._thumbnail_uris: list[str] | None = None

    # Names --------------------------------------------------------------------------------

    def head_name(self, flat: int) -> str:
        layer, head = divmod(int(flat), self.num_heads)
        return f"layer {layer} head {head}"

    def head_label(self, flat: int) -> str:
        """The short name of a head in figure titles: `L2H0`."""
        layer, head = divmod(int(flat), self.num_heads)
        return f"L{layer}H{head}"

    def image_label(self, image: int, *, short: bool = True) -> str:
        """`image <id>`; `short` (for figure titles): an id longer than `TITLE_ID_CHARS` keeps
        its end."""
        return f"image {_keep_end(self.ids[image], TITLE_ID_CHARS) if short else self.ids[image]}"

    def class_label(self, class_index: int, *, short: bool = True) -> str:
        """A class name (-1: "no label"); `short` (for figure titles): one longer than
        `TITLE_CLASS_CHARS` keeps its start."""
        name = self.class_names[class_index] if class_index >= 0 else "no label"
        return name if not short or len(name) <= TITLE_CLASS_CHARS else name[:TITLE_CLASS_CHARS - 1] + "…"

    def image_name(self, image: int, *, short: bool = False) -> str:
        """`image <id> (<class>, predicted <class>)` (without a classifier: `(<class>)`, or the
        id alone for an unlabelled image); `short`: with the title forms of the id and class
        names (which keep a figure's title short)."""
        name = self.image_label(image, short=short)
        if not self.has_classifier:
            label = self.labels[image]
            return f"{name} ({self.class_label(label, short=short)})" if label >= 0 else name
        return (f"{name} ({self.class_label(self.labels[image], short=short)}, "
                f"predicted {self.class_label(self.prediction[image], short=short)})")

    def token_name(self, token: int) -> str:
        if token < self.num_prefix:
            return "CLS" if self.num_prefix == 1 else f"prefix token {token}"
        row, col = divmod(token - self.num_prefix, self.grid[1])
        return f"patch ({row}, {col})"

    def find_image(self, image_id: str) -> int | None:
        """Index of the image whose id is `image_id` (exact match, then a unique suffix)."""
        image_id = image_id.strip()
        if image_id in self.id_index:
            return self.id_index[image_id]
        matches = [i for i, id_ in enumerate(self.ids) if id_.endswith(image_id)] if image_id else []
        return matches[0] if len(matches) == 1 else None

    # A: images ----------------------------------------------------------------------------

    def true_class_probability(self) -> np.ndarray | None:
        """`[N]` probability of the true class (of the predicted class for unlabelled images);
        None without a classifier."""
        if self.probs is None:
            return None
        return self.probs[np.arange(self.num_images), self.image_class]

    def thumbnail_png(self, image: int) -> str:
        """The image's stored thumbnail as a `data:image/png;base64,...` URI."""
        from PIL import Image

        pixels = np.asarray(self.thumbnails[image])
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    def thumbnail_uris(self) -> list[str]:
        """`thumbnail_png` of every image, encoded once per process."""
        with self._lock:
            if self._thumbnail_uris is None:
                self._thumbnail_uris = [self.thumbnail_png(i) for i in range(self.num_images)]
            return self._thumbnail_uris

    def scope_images(self, scope: str, image: int, class_index: int | None = None) -> np.ndarray:
        """Indices of the images a scope covers: the image, all, or one class (default: the
        selected image's class)."""
        if scope == "image":
            return np.asarray([image])
        if scope == "run":
            return np.arange(self.num_images)
        if scope == "class":
            k = self.image_class[image] if class_index is None or class_index < 0 else class_index
            return np.flatnonzero(self.image_class == k)
        raise ValueError(f"unknown scope {scope!r}; known: {SCOPES}")

    # B: importance ------------------------------------------------------------------------

    def _pruned(self, metric: str, mode_index: int, images: np.ndarray) -> np.ndarray:
        """`[L, H]` mean over `images` of a pruning metric under one stored mode."""
        key = {"probability": "prob"}.get(metric, metric)
        values = np.asarray(self.importance[key][mode_index][..., images], np.float64)
        if metric == "loss":
            values = values - self.baseline["loss"][images]
        return values.mean(axis=-1)

    def _baseline_value(self, metric: str, images: np.ndarray) -> float | None:
        if metric == "probability":
            return float(self.baseline["prob"][images].mean())
        if metric == "correct":
            return float(self.baseline["correct"][images].mean())
        if metric in ("loss", "kl", "feature_cos", "feature_rel_l2", "patch_cos", "patch_rel_l2"):
            return 0.0
        return None

    def head_values(self, metric: str, scope: str, image: int,
                    class_index: int | None = None) -> HeadValues:
        """B1: `metric` of every head pruned alone (whole head), averaged over the scope."""
        if metric not in self.metrics:
            raise ValueError(f"this run has no metric {metric!r}; it has {self.metrics}"
                             + ("" if self.has_classifier or metric not in CLASS_METRICS else f". {NO_CLASSIFIER}"))
        images = self.scope_images(scope, image, class_index)
        if metric in PRUNED_METRICS:
            values = self._pruned(metric, self.modes.index("head"), images)
        elif metric == "taylor":
            values = self.taylor[..., images].mean(axis=-1)
        elif metric == "confidence":
            values = self.strength["confidence"][images].mean(axis=0)
        else:
            raise ValueError(f"unknown metric {metric!r}; known: {tuple(METRICS)}")
        return HeadValues(metric, scope, np.asarray(values, np.float64),
                          self._baseline_value(metric, images), self.scope_label(scope, image, class_index))

    def ranked_heads(self) -> list[int]:
        """Every head (flat index), the most important first: the largest mean drop of the
        default metric over the run when the head is pruned (without a classifier: the largest
        mean change of the pooled features); ties in head order."""
        after = self.head_values(self.default_metric, "run", 0).values.reshape(-1)
        order = np.argsort(after if self.has_classifier else -after, kind="stable")
        return [int(h) for h in order]

    def scope_label(self, scope: str, image: int, class_index: int | None = None) -> str:
        if scope == "image":
            return self.image_label(image)
        if scope == "run":
            return f"all {self.num_images} images"
        k = self.image_class[image] if class_index is None or class_index < 0 else class_index
        return f"class {self.class_label(k)} ({int((self.image_class == k).sum())} images)"

    def mode_values(self, metric: str, scope: str, image: int, heads: list[int],
                    class_index: int | None = None) -> dict[str, np.ndarray]:
        """B2: `metric` under every prune mode for `heads`: {mode: `[len(heads)]`}.

        Modes the sweep did not store are computed live for a single image (`explorer.live`);
        over a scope of many images they are left out (NaN). Taylor and confidence have no
        prune modes: B2 shows the run's default metric for them (`b2_metric`).
        """
        metric = self.b2_metric(metric)
        images = self.scope_images(scope, image, class_index)
        out = {}
        for mode in PRUNE_MODES:
            if mode in self.modes:
                values = self._pruned(metric, self.modes.index(mode), images).reshape(-1)
                out[mode] = values[heads]
            elif scope == "image":
                from explorer import live

                ablation = live.ablation(str(self.path), int(image), mode)
                key = {"probability": "prob"}.get(metric, metric)
                values = np.asarray(getattr(ablation, key)[0, ..., 0], np.float64)
                if metric == "loss":
                    values = values - float(ablation.baseline_loss[0])
                out[mode] = values.reshape(-1)[heads]
            else:
                out[mode] = np.full(len(heads), np.nan)
        return out

    def b2_metric(self, metric: str) -> str:
        """The metric B2 shows when B1 shows `metric` (B2 needs one with prune modes)."""
        return metric if metric in PRUNED_METRICS else self.default_metric

    def top5(self, image: int, flat_head: int, mode: str) -> dict:
        """B3: top-5 classes and probabilities of `image` after pruning `flat_head` in `mode`,
        and the unpruned top-5. A run without a classifier has none (`ValueError`)."""
        if not self.has_classifier:
            raise ValueError(NO_CLASSIFIER)
        layer, head = divmod(int(flat_head), self.num_heads)
        if mode in self.modes:
            m = self.modes.index(mode)
            classes = np.asarray(self.importance["top5_classes"][m, layer, head, image])
            probs = np.asarray(self.importance["top5_probs"][m, layer, head, image])
            source = "store"
        else:
            from explorer import live

            ablation = live.ablation(str(self.path), int(image), mode)
            classes = ablation.top5_classes[0, layer, head, 0]
            probs = ablation.top5_probs[0, layer, head, 0]
            source = "computed live"
        return {"classes": [self.class_names[k] for k in classes], "probs": probs.tolist(),
                "baseline_classes": [self.class_names[k] for k in self.baseline_top5[0][image]],
                "baseline_probs": self.baseline_top5[1][image].tolist(), "source": source}

    # C: strength --------------------------------------------------------------------------

    def entropy_per_head(self, scope: str, image: int, class_index: int | None = None) -> np.ndarray:
        """C1: head entropy `[L, H]` (nats), for the image or averaged over the scope."""
        images = self.scope_images(scope, image, class_index)
        return self.strength["entropy"][images].mean(axis=0)

    def hop_profiles(self, image: int, heads: list[int]) -> np.ndarray:
        """C2: strength at hop d for `heads` on `image`: `[len(heads), rings]`."""
        profile = self.strength["profile"][image].reshape(self.num_heads_total, -1)
        return profile[heads]

    def entropy_over_images(self, heads: list[int]) -> np.ndarray:
        """C3: entropy of `heads` on every image: `[len(heads), N]`."""
        return self.strength["entropy"].reshape(self.num_images, -1)[:, heads].T

    def statistic_per_head(self, statistic: str) -> np.ndarray:
        """A per-head strength statistic averaged over all images: `[L, H]`."""
        return self.strength[statistic].mean(axis=0)

    # D: patterns --------------------------------------------------------------------------

    def density(self, space: str, bins: tuple[int, int] = (96, 96),
                shown: tuple[float, float, float, float] | None = None
                ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """D1: the number of (image, head) items of `space` in each bin of a `bins = (columns,
        rows)` grid over the part of the pattern map `shown` (left, right, bottom, top; None:
        all items with a 5% margin): counts `[rows, columns]` (row 0 at the bottom) and the
        grid's bounds (left, bottom, right, top). Aggregated by datashader, whose cost grows
        with the items, not the bins; an item on the right or top edge falls in the last bin."""
        import datashader
        import pandas as pd

        with self._lock:
            if space not in self._density:
                xy = np.asarray(self.patterns[space]["xy"], np.float64)
                xy = xy[np.isfinite(xy).all(axis=1)]
                x0, y0 = xy.min(axis=0) if len(xy) else (0.0, 0.0)
                x1, y1 = xy.max(axis=0) if len(xy) else (1.0, 1.0)
                pad_x, pad_y = 0.05 * (x1 - x0 or 1), 0.05 * (y1 - y0 or 1)
                items = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
                self._density[space] = (items, (x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y))
            items, extent = self._density[space]
        x0, x1, y0, y1 = (float(v) for v in (shown or extent))
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"D1 density: an empty part of the map: x {x0}..{x1}, y {y0}..{y1}")
        canvas = datashader.Canvas(plot_width=int(bins[0]), plot_height=int(bins[1]),
                                   x_range=(x0, x1), y_range=(y0, y1))
        counts = canvas.points(items, "x", "y", agg=datashader.count()).values
        return counts.astype(np.float64), (x0, y0, x1, y1)

    def prototypes(self, space: str) -> np.ndarray:
        """Cluster prototypes as 2-D pictures `[clusters, h, w]` (CLS space: the CLS row map)."""
        protos = np.asarray(self.patterns[space]["prototypes"], np.float64)
        return protos[:, 0] if protos.ndim == 4 else protos

    def cluster_sizes(self, space: str) -> np.ndarray:
        labels = self.patterns[space]["labels"]
        return np.bincount(labels, minlength=len(self.patterns[space]["prototypes"]))

    def heads_of_cluster(self, space: str, cluster: int) -> list[int]:
        """Heads whose most frequent cluster is `cluster`."""
        shares = self.patterns[space]["head_shares"]
        valid = ~np.isnan(shares).any(axis=1)
        return [int(h) for h in np.flatnonzero(valid & (np.nan_to_num(shares).argmax(axis=1) == cluster))]

    def _read_attention(self, image: int) -> np.ndarray:
        attention = self.run.attention(image)
        attention.setflags(write=False)  # shared by every session
        return attention

    def attention(self, image: int) -> tuple[np.ndarray, str]:
        """Full attention `[L, H, T, T]` of an image (read-only): from the store if kept (read
        once, then cached: every D view of a selection asks for it), else computed live."""
        if int(image) in self.kept:
            return self._stored_attention(int(image)), "store"
        from explorer import live

        return live.attention(str(self.path), int(image)), "computed live"
