"""C: attention strength (C1 entropy across layers, C2 n-hop profile, C3 entropy distribution, the mean-distance trend)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from explorer.data import RunData
from explorer.marks import Marks
from explorer.state import ExplorerState
from explorer.figures import Frame
from explorer.views.glyphs import (BAR, HIGHLIGHT, SECONDARY, extra_heads, layer_colours, polylines,
                                   quads, rings, segments)
from vit_jax_va.strength import layer_trend


def entropy_frame(data: RunData) -> Frame:
    """C1's axes (one tick per layer); click a dot or box-select several to select heads."""
    return Frame("layer", "entropy (nats)", width=340, height=280, x_range=(-0.5, data.depth - 0.5),
                 x_ticks=list(range(data.depth)) if data.depth <= 24 else 12,
                 tools=("tap", "box_select", "reset"), active=("tap", "box_select"), toolbar="right")


def entropy_points(data: RunData, state: ExplorerState) -> Marks:
    """C1: head entropy (nats) across layers for the selected image or scope, one dot per head
    in flat-head order (`marks.DOTS`; so a selection's indices are flat head indices), coloured
    by layer; the y range fits them and the ceiling."""
    entropy = data.entropy_per_head(state.scope, state.image, state.scope_class).reshape(-1).astype(np.float64)
    layer, head = np.divmod(np.arange(len(entropy)), data.num_heads)
    colours = np.asarray(layer_colours(data.depth), dtype=object)
    top = max(float(np.nanmax(entropy)), _max_entropy(data))
    low = float(np.nanmin(entropy))
    pad = 0.05 * (top - low) or 0.01
    return Marks({"x": layer.astype(np.float64), "y": entropy, "size": np.full(len(entropy), 8.0),
                  "fill": colours[layer], "layer": layer, "head": head}, y_range=(low - pad, top + pad))


def _max_entropy(data: RunData) -> float:
    return math.log(data.strength["profile"].shape[-1])


def entropy_ceiling(data: RunData, state: ExplorerState | None = None) -> Marks:
    """C1: the largest possible entropy, ln(rings) (a flat profile), a grey line across the
    layers (`marks.SEGMENTS`)."""
    top = _max_entropy(data)
    return Marks(segments([-0.5], top, [data.depth - 0.5], top, "grey", 0.8, 1.0))


def entropy_highlight(data: RunData, state: ExplorerState) -> Marks:
    """C1: rings on the selected heads; the title names the primary head and the scope."""
    entropy = data.entropy_per_head(state.scope, state.image, state.scope_class).reshape(-1)
    heads = [state.head, *extra_heads(state, None)]
    return rings(np.asarray(heads) // data.num_heads, entropy[heads],
                 f"C1 · {data.head_label(state.head)} · "
                 f"{data.scope_label(state.scope, state.image, state.scope_class)}")


def hop_profile_frame(data: RunData) -> Frame:
    """C2's axes; `hop_profile_bars` and `hop_profile_lines` draw it."""
    rings = data.strength["profile"].shape[-1]
    return Frame("n-hop neighbours", "strength", width=340, height=280, x_range=(-0.6, rings - 0.4),
                 y_range=(0.0, 1.0), x_ticks=list(range(rings)) if rings <= 16 else 10)


def hop_profile_bars(data: RunData, state: ExplorerState) -> Marks:
    """C2: attention strength at each hop d (Chebyshev rings) of the primary head on the selected
    image, as bars (`marks.QUADS`); the y range fits every selected head's profile."""
    heads = [state.head, *extra_heads(state)]
    profiles = data.hop_profiles(state.image, heads)  # [heads, rings]
    d = np.arange(profiles.shape[1], dtype=np.float64)
    top = float(np.nanmax(profiles)) if np.isfinite(profiles).any() else 1.0
    marks = quads(d - 0.4, 0.0, d + 0.4, np.nan_to_num(profiles[0]), fill=BAR, alpha=1.0, width=0.0,
                  hop=d, strength=profiles[0])
    return replace(marks, title=f"C2 · strength · {data.head_label(state.head)} · {data.image_label(state.image)}",
                   y_range=(0.0, top * 1.08 or 1.0))


def hop_profile_lines(data: RunData, state: ExplorerState) -> Marks:
    """C2: the other selected heads' profiles as lines (`marks.SEGMENTS`)."""
    heads = extra_heads(state)
    profiles = data.hop_profiles(state.image, heads) if heads else np.zeros((0, 0))
    return Marks(polylines([(np.arange(len(p), dtype=np.float64), p) for p in profiles], SECONDARY))


def _entropy_histograms(data: RunData, state: ExplorerState):
    """(edges, counts per selected head `[heads, bins]`, entropies `[heads, N]`) for C3."""
    heads = [state.head, *extra_heads(state)]
    values = data.entropy_over_images(heads)  # [heads, N]
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    edges = np.linspace(lo, hi, 41)
    return edges, np.stack([np.histogram(v, edges)[0] for v in values]), values


def entropy_distribution_frame(data: RunData) -> Frame:
    """C3's axes; `entropy_distribution` and `entropy_of_image` draw it."""
    return Frame("entropy", "count", width=320, height=280, x_range=(0.0, 1.0), y_range=(0.0, 1.0),
                 x_ticks=4, x_format="%.3g")


def entropy_distribution(data: RunData, state: ExplorerState) -> Marks:
    """C3: the distribution of the primary head's entropy over all images as a histogram
    (`marks.QUADS`); the ranges fit every selected head's distribution."""
    edges, counts, _ = _entropy_histograms(data, state)
    marks = quads(edges[:-1], 0.0, edges[1:], counts[0], fill=BAR, alpha=0.8, width=0.0,
                  entropy=(edges[:-1] + edges[1:]) / 2, count=counts[0])
    pad = 0.02 * (edges[-1] - edges[0])
    return replace(marks, title=f"C3 · entropy of {data.head_label(state.head)} · {data.num_images} images",
                   x_range=(edges[0] - pad, edges[-1] + pad), y_range=(0.0, float(counts.max()) * 1.08 or 1.0))


def entropy_of_image(data: RunData, state: ExplorerState) -> Marks:
    """C3: the other selected heads' distributions as lines and the selected image's entropy
    under the primary head as a red vertical line (`marks.SEGMENTS`)."""
    edges, counts, values = _entropy_histograms(data, state)
    centres = (edges[:-1] + edges[1:]) / 2
    lines = polylines([(centres, c.astype(np.float64)) for c in counts[1:]], SECONDARY)
    x = float(values[0, state.image])
    mark = segments([x], 0.0, [x], float(counts.max()) * 2 + 1, HIGHLIGHT)
    return Marks({k: np.concatenate([lines[k], mark[k]]) for k in mark})


def distance_frame(data: RunData) -> Frame:
    """The distance trend's axes; `distance_band`, `distance_line`, `distance_points` and
    `distance_marks` draw it."""
    return Frame("layer", "mean distance (px)", width=320, height=280, x_range=(-0.5, data.depth - 0.5),
                 x_ticks=list(range(data.depth)) if data.depth <= 24 else 12,
                 title="Mean attention distance per layer")


def distance_band(data: RunData, state: ExplorerState | None = None) -> Marks:
    """The layer trend of the mean attention distance (pixels, averaged over all images;
    `vit_jax_va.layer_trend`): +-1 std over the heads of each layer (`marks.BANDS`). Static."""
    trend = layer_trend(data.strength["mean_distance"])
    return Marks({"x": np.arange(data.depth, dtype=np.float64), "low": trend.mean - trend.std,
                  "high": trend.mean + trend.std})


def distance_line(data: RunData, state: ExplorerState | None = None) -> Marks:
    """The layer trend's mean (`marks.SEGMENTS`, grey). Static."""
    trend = layer_trend(data.strength["mean_distance"])
    return Marks(polylines([(np.arange(data.depth, dtype=np.float64), trend.mean)], "grey"))


def distance_points(data: RunData, state: ExplorerState | None = None) -> Marks:
    """Every head's mean distance, averaged over all images, at its layer (`marks.DOTS`). Static."""
    per_head = data.statistic_per_head("mean_distance").reshape(-1).astype(np.float64)
    return Marks({"x": (np.arange(len(per_head)) // data.num_heads).astype(np.float64), "y": per_head,
                  "size": np.full(len(per_head), 4.0), "fill": np.full(len(per_head), "grey", dtype=object)})


def distance_marks(data: RunData, state: ExplorerState) -> Marks:
    """The distance trend: rings on the selected heads' mean distance."""
    per_head = data.statistic_per_head("mean_distance").reshape(-1)
    heads = [state.head, *extra_heads(state, None)]
    return rings(np.asarray(heads) // data.num_heads, per_head[heads], None, big=12)
