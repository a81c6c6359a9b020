"""Streaming accumulators: per-head statistics and pattern samples whose memory does not grow with images.

ViT-B/16 attention is 22 MB per image, so a sweep feeds attention batch by batch
(`update(attention_batch, image_ids)` with `[batch, layers, heads, tokens, tokens]`) and keeps:

* `StrengthAccumulator`: per head, the running sum, sum of squares and count of every strength
  statistic and of the hop profile, and fixed-bin histograms of the scalar statistics over
  images (paper C3); full attention only for the images the caller names in `keep`.
* `PatternSampler`: a bounded sample of pattern items (re-centred maps and CLS maps) for
  training the pattern autoencoder, by seeded reservoir sampling over images.

Both are plain numpy objects: picklable, and `save(path)` / `load(path)` write and read one
`.npz` file (no pickled objects inside), so a sweep can checkpoint them and resume.
Image ids are ints or strings.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

import numpy as np

from vit_jax_va.layout import as_grid, check_tokens
from vit_jax_va.patterns import cls_maps, recentred_map
from vit_jax_va.strength import STATISTICS, fixed_histogram, histogram_edges, strength_statistics

_CONFIG_KEY = "__config__"


def _save_npz(path, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    np.savez(path, **{_CONFIG_KEY: np.array(json.dumps(config))}, **arrays)


def _load_npz(path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files if key != _CONFIG_KEY}
        return json.loads(str(data[_CONFIG_KEY])), arrays


def _plain(image_id):
    """numpy scalars (ids from `np.arange`) as Python ints/strs, so they hash, compare and JSON-encode plainly."""
    return image_id.item() if isinstance(image_id, np.generic) else image_id


def _check_batch(attention: np.ndarray, image_ids: Sequence, grid, num_prefix_tokens: int) -> None:
    check_tokens(attention.shape, grid, num_prefix_tokens)
    if attention.ndim != 5:
        raise ValueError(f"expected attention [batch, layers, heads, tokens, tokens], got {attention.shape}")
    if len(image_ids) != attention.shape[0]:
        raise ValueError(f"{len(image_ids)} image ids for a batch of {attention.shape[0]} images")


class StrengthAccumulator:
    """Per-head running strength statistics over a stream of images.

    Args:
      grid: patch grid (rows, cols).
      num_prefix_tokens: tokens before the patches.
      patch_size: (height, width) in pixels, for the mean attention distance.
      bins: histogram bins per statistic (edges from `strength.histogram_edges`).
      keep: image ids whose full attention `[layers, heads, tokens, tokens]` is kept.
    """

    def __init__(self, grid: Sequence[int], num_prefix_tokens: int, patch_size: Sequence[int], *,
                 bins: int = 32, keep: Iterable = ()):
        self.grid, self.num_prefix_tokens = as_grid(grid), int(num_prefix_tokens)
        self.patch_size, self.bins = as_grid(patch_size), int(bins)
        self.keep = [_plain(i) for i in keep]
        self.images = 0
        self.edges = {name: histogram_edges(name, self.grid, self.patch_size, self.bins) for name in STATISTICS}
        self.sums: dict[str, np.ndarray] = {}
        self.squares: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.histograms: dict[str, np.ndarray] = {}
        self.kept: dict[Any, np.ndarray] = {}

    def update(self, attention_batch, image_ids: Sequence) -> None:
        """Add a batch `[batch, layers, heads, tokens, tokens]` of post-softmax attention."""
        _check_batch(attention_batch, image_ids, self.grid, self.num_prefix_tokens)
        stats = strength_statistics(attention_batch, self.grid, self.num_prefix_tokens, self.patch_size)
        for name, values in stats.items():
            values = np.asarray(values, dtype=np.float64)
            finite = np.isfinite(values)  # a fully pruned head has NaN entropy; it must not poison the sums
            clean = np.where(finite, values, 0.0)
            if name not in self.sums:
                self.sums[name] = np.zeros(values.shape[1:])
                self.squares[name] = np.zeros(values.shape[1:])
                self.counts[name] = np.zeros(values.shape[1:], np.int64)
                if name in self.edges:
                    self.histograms[name] = np.zeros((*values.shape[1:], self.bins), np.int64)
            self.sums[name] += clean.sum(axis=0)
            self.squares[name] += (clean ** 2).sum(axis=0)
            self.counts[name] += finite.sum(axis=0)
            if name in self.edges:
                self.histograms[name] += fixed_histogram(values, self.edges[name])
        self.images += len(image_ids)
        wanted = set(self.keep)
        for index, image_id in enumerate(map(_plain, image_ids)):
            if image_id in wanted:
                self.kept[image_id] = np.asarray(attention_batch[index], dtype=np.float32)

    def result(self) -> dict[str, Any]:
        """Per-head summaries so far.

        Returns a dict with, for every statistic in `strength.STATISTICS` and "profile":
        `{name}_mean` and `{name}_std` (population std over images; `[layers, heads]`, and
        `[layers, heads, rings]` for the profile), `{name}_count`; for the scalar statistics
        `{name}_histogram` `[layers, heads, bins]` and `{name}_edges` `[bins + 1]`; "images" (the
        number of images seen) and "kept" ({image id: attention `[layers, heads, tokens, tokens]`}).
        """
        out: dict[str, Any] = {"images": self.images, "kept": dict(self.kept)}
        for name, total in self.sums.items():
            count = self.counts[name]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = total / count
                variance = np.maximum(self.squares[name] / count - mean ** 2, 0.0)
            out.update({f"{name}_mean": mean, f"{name}_std": np.sqrt(variance), f"{name}_count": count})
        for name, counts in self.histograms.items():
            out[f"{name}_histogram"], out[f"{name}_edges"] = counts, self.edges[name]
        return out

    def save(self, path) -> None:
        """Write the running state to one `.npz` file."""
        config = {"grid": self.grid, "num_prefix_tokens": self.num_prefix_tokens,
                  "patch_size": self.patch_size, "bins": self.bins, "keep": self.keep,
                  "images": self.images, "kept_ids": list(self.kept)}
        arrays = {}
        for group in ("sums", "squares", "counts", "histograms"):
            arrays.update({f"{group}/{name}": value for name, value in getattr(self, group).items()})
        arrays.update({f"kept/{n}": value for n, value in enumerate(self.kept.values())})
        _save_npz(path, config, arrays)

    @classmethod
    def load(cls, path) -> "StrengthAccumulator":
        config, arrays = _load_npz(path)
        acc = cls(config["grid"], config["num_prefix_tokens"], config["patch_size"],
                  bins=config["bins"], keep=config["keep"])
        acc.images = config["images"]
        for key, value in arrays.items():
            group, name = key.split("/", 1)
            if group == "kept":
                acc.kept[config["kept_ids"][int(name)]] = value
            else:
                getattr(acc, group)[name] = value
        return acc


class PatternSampler:
    """A bounded, seeded sample of pattern items for every head.

    Reservoir sampling over images (Vitter's algorithm R): after any number of images, each
    image is in the sample with equal probability, and each head holds at most `quota` items.
    Every head keeps the *same* sampled images, so heads are compared on the same inputs.

    Args:
      grid, num_prefix_tokens: the token layout.
      quota: items kept per head (images in the reservoir).
      seed: seeds the reservoir; same stream and seed give the same sample, whatever the batching.
    """

    def __init__(self, grid: Sequence[int], num_prefix_tokens: int, quota: int, *, seed: int = 0):
        self.grid, self.num_prefix_tokens = as_grid(grid), int(num_prefix_tokens)
        self.quota, self.seed = int(quota), int(seed)
        self.rng = np.random.default_rng(self.seed)
        self.seen = 0
        self.patch_items: np.ndarray | None = None  # [quota, layers, heads, 2 rows - 1, 2 cols - 1]
        self.cls_items: np.ndarray | None = None    # [quota, layers, heads, 2, rows, cols]
        self.image_ids: list = []                   # [filled], slot order

    def update(self, attention_batch, image_ids: Sequence) -> None:
        """Offer a batch `[batch, layers, heads, tokens, tokens]` of post-softmax attention."""
        _check_batch(attention_batch, image_ids, self.grid, self.num_prefix_tokens)
        patch = np.asarray(recentred_map(attention_batch, self.grid, self.num_prefix_tokens))
        cls = (np.asarray(cls_maps(attention_batch, self.grid, self.num_prefix_tokens))
               if self.num_prefix_tokens else None)
        if self.patch_items is None:
            self.patch_items = np.zeros((self.quota, *patch.shape[1:]), np.float32)
            self.cls_items = None if cls is None else np.zeros((self.quota, *cls.shape[1:]), np.float32)
        for index, image_id in enumerate(map(_plain, image_ids)):
            slot = self.seen if self.seen < self.quota else int(self.rng.integers(0, self.seen + 1))
            self.seen += 1
            if slot >= self.quota:
                continue
            if slot == len(self.image_ids):  # still filling the reservoir
                self.image_ids.append(image_id)
            else:
                self.image_ids[slot] = image_id
            self.patch_items[slot] = patch[index]
            if cls is not None:
                self.cls_items[slot] = cls[index]

    def result(self, kind: str = "patch") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The sample as autoencoder training items.

        Args:
          kind: "patch" (re-centred maps) or "cls" (CLS maps; needs a prefix token).
        Returns:
          (items `[n, *item_shape]`, head_index `[n]` = layer * heads + head, image_ids `[n]`),
          with n = sampled images * layers * heads, image-major.
        """
        if kind not in ("patch", "cls"):
            raise ValueError(f"kind must be 'patch' or 'cls', got {kind!r}")
        store = self.patch_items if kind == "patch" else self.cls_items
        if store is None:
            raise ValueError("no items yet" if self.patch_items is None else "no prefix token: no CLS maps")
        filled = min(self.seen, self.quota)
        layers, heads = store.shape[1:3]
        items = store[:filled].reshape(filled * layers * heads, *store.shape[3:])
        head_index = np.tile(np.arange(layers * heads), filled)
        return items, head_index, np.repeat(np.asarray(self.image_ids), layers * heads)

    def save(self, path) -> None:
        """Write the sample and the RNG state to one `.npz` file."""
        config = {"grid": self.grid, "num_prefix_tokens": self.num_prefix_tokens, "quota": self.quota,
                  "seed": self.seed, "seen": self.seen, "rng": self.rng.bit_generator.state}
        arrays = {name: value for name in ("patch_items", "cls_items")
                  if (value := getattr(self, name)) is not None}
        if self.image_ids:
            arrays["image_ids"] = np.asarray(self.image_ids)
        _save_npz(path, config, arrays)

    @classmethod
    def load(cls, path) -> "PatternSampler":
        config, arrays = _load_npz(path)
        sampler = cls(config["grid"], config["num_prefix_tokens"], config["quota"], seed=config["seed"])
        sampler.seen = config["seen"]
        sampler.rng.bit_generator.state = config["rng"]
        sampler.image_ids = arrays.pop("image_ids", np.zeros(0)).tolist()
        for name, value in arrays.items():
            setattr(sampler, name, value)
        return sampler
