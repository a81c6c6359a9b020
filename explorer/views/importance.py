"""B: head importance (B1 line and heat map), partial pruning modes (B2), top-5 predictions (B3), the cumulative pruning curve."""

from __future__ import annotations

from dataclasses import replace

import holoviews as hv
import numpy as np

from explorer.data import MODE_LABELS, RunData
from explorer.marks import Marks
from explorer.state import ExplorerState
from explorer.figures import Frame
from explorer.views.glyphs import (BAR, CLS_COLOUR, HIGHLIGHT, SECONDARY, bokeh_element,
                                   extra_heads, image_glyph, polylines, quads, rings, segments)
from vit_jax_va.masks import PRUNE_MODES, prune_region


def _metric_title(data: RunData, state: ExplorerState) -> str:
    scope = data.scope_label(state.scope, state.image, state.scope_class)
    return f"{state.metric} · {scope}"


def head_importance_frame(data: RunData) -> Frame:
    """B1's axes (x = layer * heads + head, one tick per layer); `head_importance_line`,
    `head_importance_values` and `head_importance_marks` draw it. Click a head to select it."""
    n = data.num_heads_total
    return Frame("head (layer * heads + head)", "value", width=620, height=230, grid=True,
                 x_range=(-0.5, n - 0.5), y_range=(0.0, 1.0),
                 x_ticks=[(l * data.num_heads, f"L{l}") for l in range(data.depth)],
                 tools=("tap", "pan", "wheel_zoom", "box_zoom", "reset"), active=("tap",), toolbar="above")


def head_importance_line(data: RunData, state: ExplorerState) -> Marks:
    """B1: the line through every head's value and, thin grey, the unpruned value
    (`marks.SEGMENTS`). Independent of the head selection."""
    hv_values = data.head_values(state.metric, state.scope, state.image, state.scope_class)
    values = hv_values.values.reshape(-1).astype(np.float64)
    x = np.arange(len(values), dtype=np.float64)
    line = polylines([(x, values)], BAR)
    baseline = float(hv_values.baseline) if hv_values.baseline is not None else np.nan
    base = segments([x[0]], baseline, [x[-1]], baseline, "grey", 0.8, 1.0)
    return Marks({k: np.concatenate([base[k], line[k]]) for k in line})


def head_importance_values(data: RunData, state: ExplorerState) -> Marks:
    """B1: the metric of every head pruned alone as dots over the flat head index (`marks.DOTS`,
    x = layer * heads + head); the y range fits the values and the unpruned value. Independent
    of the head selection."""
    hv_values = data.head_values(state.metric, state.scope, state.image, state.scope_class)
    values = hv_values.values.reshape(-1).astype(np.float64)
    x = np.arange(len(values))
    layer, head = np.divmod(x, data.num_heads)
    shown = values[np.isfinite(values)]
    if hv_values.baseline is not None and np.isfinite(hv_values.baseline):
        shown = np.append(shown, float(hv_values.baseline))
    lo, hi = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo) or 0.05 * (abs(hi) or 1.0)
    return Marks({"x": x.astype(np.float64), "y": values, "size": np.full(len(x), 5.0),
                  "fill": np.asarray([BAR] * len(x), dtype=object), "layer": layer, "head": head},
                 y_range=(lo - pad, hi + pad), y_label=state.metric)


def head_importance_marks(data: RunData, state: ExplorerState) -> Marks:
    """B1: rings on the selected heads (`marks.RINGS`: the primary one red, larger); the title
    names the metric, scope and primary head."""
    values = data.head_values(state.metric, state.scope, state.image, state.scope_class).values.reshape(-1)
    heads = [state.head, *extra_heads(state, None)]
    return rings(heads, values[heads],
                 f"B1 · {_metric_title(data, state)} · {data.head_label(state.head)}", big=14)


def head_importance_cells(data: RunData, state: ExplorerState) -> Marks:
    """B1 as a layers x heads heat map (`marks.IMAGE`; the frame's y axis is inverted so that
    layer 0 is on top). Independent of the head selection."""
    values = data.head_values(state.metric, state.scope, state.image, state.scope_class).values
    L, H = values.shape
    return image_glyph(values[::-1], -0.5, -0.5, H, L, "Blues_r" if state.metric in ("probability", "correct") else "Blues",
                       colour_title="accuracy" if state.metric == "correct" else state.metric)


def head_importance_heatmap_frame(data: RunData) -> Frame:
    """The heat map's axes (layer 0 on top); `head_importance_cells` and
    `head_importance_boxes` draw it. Click a cell to select its head."""
    H, L = data.num_heads, data.depth
    return Frame("head", "layer", width=290, height=230, flip_y=True,
                 x_range=(-0.5, H - 0.5), y_range=(-0.5, L - 0.5),
                 x_ticks=list(range(H)) if H <= 16 else 8, y_ticks=list(range(L)) if L <= 16 else 8,
                 tools=("tap",))


def head_importance_boxes(data: RunData, state: ExplorerState) -> Marks:
    """The heat map's outlines of the selected heads (`marks.QUADS`, primary red); the title
    names the primary head."""
    heads = [state.head, *extra_heads(state, None)]
    layer, head = np.divmod(np.asarray(heads), data.num_heads)
    return quads(head - 0.5, layer - 0.5, head + 0.5, layer + 0.5,
                 f"B1 · layers x heads · {data.head_label(state.head)}",
                 ring=[HIGHLIGHT] + [SECONDARY] * (len(heads) - 1))


def _b2_layout(data: RunData, state: ExplorerState):
    """B2's numbers and vertical layout: (heads, metric, table `[modes, heads]`, bottom and top
    of the bars' axis, span, the glyphs' band `(y0, y1)`)."""
    heads = [state.head, *extra_heads(state)]
    values = data.mode_values(state.metric, state.scope, state.image, heads, state.scope_class)
    metric = data.b2_metric(state.metric)
    table = np.array([values[m] for m in PRUNE_MODES])  # [modes, heads]
    finite = table[np.isfinite(table)]
    top = max(1.0 if metric in ("probability", "correct") else 0.0,
              float(finite.max()) if finite.size else 1.0)
    bottom = min(0.0, float(finite.min()) if finite.size else 0.0)
    span = top - bottom or 1.0
    glyph_top = bottom - 0.1 * span
    return heads, metric, table, bottom, top, span, (glyph_top - 0.3 * span, glyph_top)


def partial_pruning_frame(data: RunData) -> Frame:
    """B2's axes; `partial_pruning_bars` and `partial_pruning_glyphs` draw it. Click a mode
    to choose it for B3."""
    return Frame("mode", "value", width=320, height=260, x_axis=False,
                 x_range=(-0.6, len(PRUNE_MODES) - 0.4), y_range=(-0.5, 1.0), tools=("tap",))


def partial_pruning_bars(data: RunData, state: ExplorerState) -> Marks:
    """B2: the metric under each of the six prune modes for the selected heads (primary first,
    `marks.QUADS`); `partial_pruning_glyphs` draws the mode glyphs under the bars. Click a bar or
    glyph to choose the mode of B3."""
    heads, metric, table, bottom, top, span, (glyph_y0, _) = _b2_layout(data, state)
    width = 0.7 / len(heads)
    m, j = np.divmod(np.arange(table.size), len(heads))  # bar order: mode-major
    v = table.reshape(-1)
    x0 = m - 0.35 + j * width
    fill = np.where(j == 0, BAR, SECONDARY)
    marks = quads(x0, np.where(np.isfinite(v), np.minimum(0.0, v), 0.0), x0 + width,
                  np.where(np.isfinite(v), np.maximum(0.0, v), 0.0), fill=fill, alpha=1.0, ring="white", width=1.0,
                  head=[data.head_label(heads[i]) for i in j], mode=[MODE_LABELS[PRUNE_MODES[i]] for i in m],
                  value=v)
    more = f" +{len(heads) - 1}" if len(heads) > 1 else ""  # the others: grey bars, named on hover
    return replace(marks, title=f"B2 · {metric} per mode · {data.head_label(heads[0])}{more}",
                   y_range=(glyph_y0 - 0.2 * span, top + 0.05 * span),
                   y_ticks=[round(t, 3) for t in np.linspace(bottom, top, 5)], y_label=metric)


def partial_pruning_glyphs(data: RunData, state: ExplorerState) -> Marks:
    """B2 glyphs under the bars (`marks.QUADS`): for each prune mode at x = 0..5 a 2 x 2 block
    icon (top row / left column: CLS; the rest: patches) with the zeroed blocks filled, as in
    paper-partial-pruning-modes.png, and last a red frame around the mode B3 shows. The blocks
    come from `vit_jax_va.masks.prune_region` on a one-CLS, one-patch matrix."""
    *_, (y0, y1) = _b2_layout(data, state)
    height = y1 - y0
    f = 0.3  # the CLS band's share of the icon
    boxes = []  # x0, y0, x1, y1, fill, alpha, ring, width
    for m, mode in enumerate(PRUNE_MODES):
        region = prune_region(mode, 2, 1)  # [query, key]: 0 is CLS, 1 the patches
        x0, x1 = m - 0.3, m + 0.3
        xs = [(x0, x0 + f * (x1 - x0)), (x0 + f * (x1 - x0), x1)]         # key: CLS, patches
        ys = [(y1 - f * height, y1), (y0, y1 - f * height)]                 # query: CLS, patches
        for q in range(2):
            for k in range(2):
                boxes.append((xs[k][0], ys[q][0], xs[k][1], ys[q][1],
                              "#6e6e6e" if region[q, k] else "#ffffff", 1.0, "black", 1.0))
        if mode == state.mode:
            pad_x, pad_y = 0.12, 0.18 * height
            frame = (x0 - pad_x, y0 - pad_y, x1 + pad_x, y1 + pad_y, "#ffffff", 0.0, HIGHLIGHT, 2.0)
    boxes.append(frame)
    x0, y0, x1, y1, fill, alpha, ring, width = (list(c) for c in zip(*boxes))
    return quads(x0, y0, x1, y1, fill=fill, alpha=alpha, ring=ring, width=width)


def top5_markdown(data: RunData, state: ExplorerState) -> str:
    """B3: the top-5 predictions after pruning the primary head in the chosen mode."""
    result = data_top5(data, state)
    if isinstance(result, str):
        return result
    rows = "\n".join(
        f"| {i + 1}. {c} | {p:.4f} | {bc} | {bp:.4f} |"
        for i, (c, p, bc, bp) in enumerate(zip(result["classes"], result["probs"],
                                                result["baseline_classes"], result["baseline_probs"])))
    return (f"**B3 · top-5 after pruning {data.head_name(state.head)}** "
            f"(mode: {MODE_LABELS[state.mode]}; {result['source']})\n\n"
            f"| pruned | p | unpruned | p |\n|---|---:|---|---:|\n{rows}\n\n"
            f"{data.image_name(state.image)}")


def data_top5(data: RunData, state: ExplorerState):
    from explorer.data import NO_CLASSIFIER
    from explorer.live import LiveUnavailable

    if not data.has_classifier:
        return f"**B3 · no top-5 predictions**: {NO_CLASSIFIER}"
    try:
        return data.top5(state.image, state.head, state.mode)
    except LiveUnavailable as err:
        return f"**B3** · mode {state.mode} was not swept and cannot be computed live: {err}"


@bokeh_element
def pruning_curve(data: RunData) -> hv.Overlay:
    """The cumulative pruning curve of the run (static): accuracy as heads are pruned, most
    important first versus least important first; for a run without a classifier, the mean
    change of the pooled features (1 - cosine similarity) instead. The legend sits under the
    axes, off the lines; the title says how many images were measured and whether they were
    held out from the ranking."""
    c = data.curve
    x = c["num_pruned"]
    metric = str(c.get("metric", "prob_drop"))
    n = int(c["num_images"]) if "num_images" in c else None
    held_out = "ranking_images" in c and not np.isin(c["images"], c["ranking_images"]).any()
    measured = f" · {n} {'held-out ' if held_out else ''}images" if n else ""
    if "accuracy_most" in c:
        measure, label, ylim = "accuracy", "accuracy", (0, 1.02)
    else:
        measure, label = "feature_cos", "1 - cos(features)"
        top = float(max(np.max(c["feature_cos_most"]), np.max(c["feature_cos_least"]), 1e-6))
        ylim = (0, 1.02 * top)
    curves = [hv.Curve((x, c[f"{measure}_most"]), "heads pruned", label, label="most important first")
              .opts(color=HIGHLIGHT),
              hv.Curve((x, c[f"{measure}_least"]), "heads pruned", label, label="least important first")
              .opts(color=CLS_COLOUR)]
    return hv.Overlay(curves).opts(hv.opts.Curve(tools=["hover"], line_width=2),
                                   hv.opts.Overlay(
        title=f"Pruning curve{measured}", xlabel=f"heads pruned (ranked by {metric})",
        width=290, height=320, legend_position="bottom", legend_cols=1, ylim=ylim, toolbar=None))
