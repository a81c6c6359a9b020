"""C: attention strength (C1 entropy across layers, C2 n-hop profile, C3 entropy distribution, the mean-distance trend)."""

from __future__ import annotations

import math
from dataclasses import replace

import holoviews as hv
import numpy as np

from explorer.data import RunData
from explorer.marks import Marks
from explorer.state import ExplorerState
from explorer.views.glyphs import (BAR, HIGHLIGHT, SECONDARY, bokeh_element, chart_frame,
                                   extra_heads, layer_colours, polylines, quads, rings, segments)
from vit_jax_va.strength import layer_trend


@bokeh_element
def entropy_points(data: RunData, state: ExplorerState) -> hv.Scatter:
    """C1: head entropy (nats) across layers, one dot per head in flat-head order (so a
    selection's indices are flat head indices); box-select or click to select heads.
    `entropy_values` redraws the dots for another image or scope."""
    entropy = data.entropy_per_head(state.scope, state.image, state.scope_class).reshape(-1)
    layer, head = np.divmod(np.arange(len(entropy)), data.num_heads)
    colours = layer_colours(data.depth)
    return hv.Scatter({"layer": layer.astype(float), "entropy": entropy, "head": head,
                       "colour": [colours[l] for l in layer]},
                      "layer", ["entropy", "head", "colour"]).opts(
        color="colour", size=8, tools=["hover", "tap", "box_select"], nonselection_alpha=1.0,
        selection_alpha=1.0, line_color=None, active_tools=["tap", "box_select"])


def entropy_values(data: RunData, state: ExplorerState) -> Marks:
    """C1: the dots' entropies for the selected image or scope (written into the data source of
    `entropy_points`, so that its box and tap selections keep working) and a y range that
    fits them and the ceiling."""
    entropy = data.entropy_per_head(state.scope, state.image, state.scope_class).reshape(-1).astype(np.float64)
    top = max(float(np.nanmax(entropy)), _max_entropy(data))
    low = float(np.nanmin(entropy))
    pad = 0.05 * (top - low) or 0.01
    return Marks({"entropy": entropy}, y_range=(low - pad, top + pad))


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


@bokeh_element
def hop_profile_frame(data: RunData) -> hv.Curve:
    """C2's axes; `hop_profile_bars` and `hop_profile_lines` draw it."""
    rings = data.strength["profile"].shape[-1]
    return chart_frame("n-hop neighbours", "strength", width=340, height=280,
                       xticks=list(range(rings)) if rings <= 16 else 10, xlim=(-0.6, rings - 0.4))


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


@bokeh_element
def entropy_distribution_frame(data: RunData) -> hv.Curve:
    """C3's axes; `entropy_distribution` and `entropy_of_image` draw it."""
    return chart_frame("entropy", "count", width=320, height=280, xticks=4, xformatter="%.3g")


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


@bokeh_element
def distance_trend(data: RunData) -> hv.Overlay:
    """Mean attention distance (pixels) per head, averaged over all images, and its layer
    trend (`vit_jax_va.layer_trend`: mean and +-1 std over the heads of a layer). Static per
    run; `distance_marks` rings the selected heads."""
    stat = data.strength["mean_distance"]
    trend = layer_trend(stat)
    per_head = data.statistic_per_head("mean_distance").reshape(-1)
    layers = np.arange(data.depth)
    spread = hv.Spread((layers, trend.mean, trend.std), "layer", ["distance", "std"]).opts(
        color="lightgrey", alpha=0.6)
    line = hv.Curve((layers, trend.mean), "layer", "distance").opts(color="grey", line_width=2)
    dots = hv.Scatter((np.arange(len(per_head)) // data.num_heads, per_head), "layer", "distance").opts(
        color="grey", size=4, alpha=0.6)
    return (spread * line * dots).opts(hv.opts.Overlay(
        title="Mean attention distance per layer", width=320, height=280,
        ylabel="mean distance (px)", toolbar=None))


def distance_marks(data: RunData, state: ExplorerState) -> Marks:
    """The distance trend: rings on the selected heads' mean distance."""
    per_head = data.statistic_per_head("mean_distance").reshape(-1)
    heads = [state.head, *extra_heads(state, None)]
    return rings(np.asarray(heads) // data.num_heads, per_head[heads], None, big=12)
