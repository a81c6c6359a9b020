"""The views of the explorer (METHOD.md sections 1-4): functions of `(data, state)`.

A view reads the selection from an `ExplorerState` and the numbers from a `RunData`. What
changes with the selection is returned as `explorer.marks.Marks` (the columns of one glyph
layer, and the title, ranges and colours it sets), which `explorer.app` draws straight into the
Bokeh figure; what does not is a HoloViews element: a `*_frame` (the empty axes of a view drawn
wholly in marks), the static layers (A's points, C1's dots, the pruning curve, the distance
trend) and the D1 map (which changes only with the pattern space). Titles name what is shown
(the head, the image), which the browser test reads.

View names follow the paper: A image overview; B1 head importance line and heat map, B2 partial
pruning modes, B3 top-5 predictions, the cumulative pruning curve; C1 head entropy across
layers, C2 n-hop profile, C3 entropy distribution, the mean-distance trend; D1 pattern map and
prototypes, D2 image with a source patch's attention, D3 source -> target links, D4 attention
matrix, D5 attention histogram.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import holoviews as hv
import numpy as np
from bokeh.models import HoverTool

from explorer.data import MODE_LABELS, RunData
from explorer.marks import Marks
from explorer.state import ExplorerState
from vit_jax_va.masks import PRUNE_MODES, prune_region
from vit_jax_va.strength import layer_trend

HIGHLIGHT = "#d62728"     # selected heads, the selected image, the selected mode
SECONDARY = "#ff9896"     # selected heads other than the primary one
BAR = "#8fa8d0"           # the paper's light-blue bars
CLS_COLOUR = "#2b5fa8"    # CLS attention and CLS links (paper: blue)
PATCH_COLOUR = "#d9711c"  # patch attention and patch links (paper: orange)
MAX_LINKS = 4000          # links drawn in D3 (the strongest); Bokeh stays fluid below ~10k
MAX_EXTRA_HEADS = 8       # heads besides the primary drawn in C2, C3 and B2

# Every view is a Bokeh plot; options below are Bokeh options, so the backend loads with them.
hv.extension("bokeh", logo=False)


def set_defaults() -> None:
    """Small titles and tools-above for every plot of the explorer (called by `explorer.app`)."""
    small = {"fontsize": {"title": "10pt", "labels": "9pt", "xticks": "8pt", "yticks": "8pt"}}
    for element in ("Overlay", "Curve", "Scatter", "Points", "Image", "RGB", "Rectangles",
                    "Segments", "Histogram", "Area", "Path", "Spread"):
        hv.opts.defaults(getattr(hv.opts, element)(**small))


def layer_colours(depth: int) -> list[str]:
    """One colour per layer, early layers light-blue to late layers yellow like the paper."""
    from bokeh.palettes import Category10, Turbo256

    if depth <= 10:
        return list(Category10[10][:depth])
    return [Turbo256[int(i)] for i in np.linspace(20, 235, depth)]


def class_colours(k: int) -> list[str]:
    from bokeh.palettes import Category10, Category20, Turbo256

    if k <= 10:
        return list(Category10[10][:k])
    if k <= 20:
        return list(Category20[20][:k])
    return [Turbo256[int(i)] for i in np.linspace(0, 255, k)]


def _extra_heads(state: ExplorerState, limit: int | None = MAX_EXTRA_HEADS) -> list[int]:
    """The selected heads other than the primary one (at most `limit`)."""
    return [h for h in state.heads if h != state.head][:limit]


# Marks and frames (explorer.marks) ---------------------------------------------------------

def _quads(x0, y0, x1, y1, title: str | None = None, *, fill="#ffffff", alpha=0.0, ring=HIGHLIGHT,
           width=3.0, **extra) -> Marks:
    """Boxes (`marks.QUADS`); the styles are one value for all or one per box; `extra` columns
    (for a hover) ride along."""
    x0 = np.asarray(x0, np.float64)
    n = len(x0)
    column = lambda v, dtype=None: np.asarray(v if np.ndim(v) else [v] * n, dtype)  # noqa: E731
    return Marks({"x0": x0, "y0": column(y0, np.float64), "x1": column(x1, np.float64),
                  "y1": column(y1, np.float64), "fill": column(fill, object), "alpha": column(alpha, np.float64),
                  "ring": column(ring, object), "width": column(width, np.float64),
                  **{k: np.asarray(v) for k, v in extra.items()}}, title)


def _rings(x, y, title: str | None, big: int = 16) -> Marks:
    """Rings (`marks.RINGS`) on selected items, given primary first: red and larger for the
    primary one."""
    primary = np.arange(len(x)) == 0
    return Marks({"x": np.asarray(x, np.float64), "y": np.asarray(y, np.float64),
                  "ring": np.where(primary, HIGHLIGHT, SECONDARY).astype(object),
                  "size": np.where(primary, big, big - 3)}, title)


def _segments(x0, y0, x1, y1, colour, alpha=1.0, width=2.0, **extra) -> dict[str, np.ndarray]:
    """Columns of `marks.SEGMENTS`; the styles are one value for all or one per segment."""
    x0 = np.asarray(x0, np.float64)
    n = len(x0)
    column = lambda v, dtype=None: np.asarray(v if np.ndim(v) else [v] * n, dtype)  # noqa: E731
    return {"x0": x0, "y0": column(y0, np.float64), "x1": column(x1, np.float64), "y1": column(y1, np.float64),
            "colour": column(colour, object), "alpha": column(alpha, np.float64),
            "width": column(width, np.float64), **{k: np.asarray(v) for k, v in extra.items()}}


def _polylines(lines: list[tuple[np.ndarray, np.ndarray]], colour: str, width: float = 2.0) -> dict[str, np.ndarray]:
    """Polylines `[(x, y), ...]` as the columns of `marks.SEGMENTS` (one segment per step)."""
    x0 = [x[:-1] for x, _ in lines] or [np.zeros(0)]
    y0 = [y[:-1] for _, y in lines] or [np.zeros(0)]
    x1 = [x[1:] for x, _ in lines] or [np.zeros(0)]
    y1 = [y[1:] for _, y in lines] or [np.zeros(0)]
    return _segments(np.concatenate(x0), np.concatenate(y0), np.concatenate(x1), np.concatenate(y1),
                     colour, 1.0, width)


def _image(values: np.ndarray, x0: float, y0: float, width: float, height: float, cmap: str,
           title: str | None = None, colour_title: str | None = None) -> Marks:
    """An image (`marks.IMAGE`) of `values` whose row 0 is the top row, over the box with lower
    left corner `(x0, y0)`; colours from the HoloViews colour map `cmap` over the values' range."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 1e-6, high + 1e-6
    return Marks({"image": [values[::-1]], "x": [float(x0)], "y": [float(y0)], "dw": [float(width)],
                  "dh": [float(height)]}, title, palette=_palette(cmap), colour_range=(low, high),
                 colour_title=colour_title)


@functools.lru_cache(maxsize=16)
def _palette(cmap: str) -> tuple[str, ...]:
    """256 colours of a HoloViews colour map (the same the HoloViews views used)."""
    from holoviews.plotting.util import process_cmap

    return tuple(process_cmap(cmap, 256))


def chart_frame(x_label: str, y_label: str, *, logy: bool = False, **options) -> hv.Curve:
    """An empty chart (axes, labels, size) for a view drawn wholly in marks layers."""
    return hv.Curve([], x_label, y_label).opts(**{"logy": logy, "toolbar": None, **options})


# A: image overview -------------------------------------------------------------------------

def image_points(data: RunData) -> hv.Points:
    """A: every image at its `overview_xy`, coloured by class, alpha = probability of the true
    class; the hover shows label, prediction, id and the thumbnail. Static per run."""
    p_true = data.true_class_probability()
    names = np.asarray(data.class_names, dtype=object)
    label_names = np.where(data.labels >= 0, names[np.clip(data.labels, 0, None)], "(none)")
    with_thumbs = data.num_images <= 5000  # data URIs cost ~0.5 kB each in the page
    columns = {
        "x": data.overview_xy[:, 0], "y": data.overview_xy[:, 1],
        "cls": names[data.image_class], "label": label_names,
        "prediction": names[data.prediction], "id": data.ids,
        "p_true": p_true, "alpha": 0.25 + 0.75 * p_true, "index": np.arange(data.num_images),
        "thumb": (data.thumbnail_uris() if with_thumbs
                  else [""] * data.num_images),
    }
    hover = HoverTool(tooltips="""
        <div style="display:flex;gap:6px;align-items:center">
          <img src="@thumb" width="56" height="56" style="image-rendering:pixelated;border:1px solid #ccc"/>
          <div><b>@label</b> &rarr; @prediction<br/>id @id<br/>p(true) @p_true{0.000}</div>
        </div>""")
    colours = class_colours(len(data.class_names))
    return hv.Points(columns, ["x", "y"], ["cls", "label", "prediction", "id", "p_true", "alpha",
                                          "index", "thumb"]).opts(
        color="cls", cmap={n: colours[i] for i, n in enumerate(data.class_names)},
        alpha="alpha", size=7, line_color=None, tools=[hover, "tap", "wheel_zoom"],
        nonselection_alpha=0.25, selection_alpha=1.0,
        show_legend=len(data.class_names) <= 12, legend_position="right",
        xaxis=None, yaxis=None, width=470, height=420, active_tools=["wheel_zoom"])


def image_marker(data: RunData, state: ExplorerState) -> Marks:
    """A: a ring around the selected image (`marks.RINGS`); the title names it."""
    i = state.image
    return _rings(data.overview_xy[[i], 0], data.overview_xy[[i], 1], f"A · {data.image_name(i, short=True)}", big=18)


# B: importance -----------------------------------------------------------------------------

def _metric_title(data: RunData, state: ExplorerState) -> str:
    scope = data.scope_label(state.scope, state.image, state.scope_class)
    return f"{state.metric} · {scope}"


def head_importance_frame(data: RunData) -> hv.Curve:
    """B1's axes (x = layer * heads + head, one tick per layer); `head_importance_line`,
    `head_importance_values` and `head_importance_marks` draw it."""
    n = data.num_heads_total
    return chart_frame("head (layer * heads + head)", "value", width=620, height=230, show_grid=True,
                       toolbar="above", xlim=(-0.5, n - 0.5), tools=["tap"],
                       xticks=[(l * data.num_heads, f"L{l}") for l in range(data.depth)])


def head_importance_line(data: RunData, state: ExplorerState) -> Marks:
    """B1: the line through every head's value and, thin grey, the unpruned value
    (`marks.SEGMENTS`). Independent of the head selection."""
    hv_values = data.head_values(state.metric, state.scope, state.image, state.scope_class)
    values = hv_values.values.reshape(-1).astype(np.float64)
    x = np.arange(len(values), dtype=np.float64)
    line = _polylines([(x, values)], BAR)
    baseline = float(hv_values.baseline) if hv_values.baseline is not None else np.nan
    base = _segments([x[0]], baseline, [x[-1]], baseline, "grey", 0.8, 1.0)
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
    heads = [state.head, *_extra_heads(state, None)]
    return _rings(heads, values[heads],
                  f"B1 · {_metric_title(data, state)} · {data.head_label(state.head)}", big=14)


def head_importance_cells(data: RunData, state: ExplorerState) -> Marks:
    """B1 as a layers x heads heat map (`marks.IMAGE`; the frame's y axis is inverted so that
    layer 0 is on top). Independent of the head selection."""
    values = data.head_values(state.metric, state.scope, state.image, state.scope_class).values
    L, H = values.shape
    return _image(values[::-1], -0.5, -0.5, H, L, "Blues_r" if state.metric in ("probability", "correct") else "Blues",
                  colour_title="accuracy" if state.metric == "correct" else state.metric)


def head_importance_heatmap_frame(data: RunData) -> hv.Curve:
    """The heat map's axes (layer 0 on top); `head_importance_cells` and
    `head_importance_boxes` draw it."""
    H, L = data.num_heads, data.depth
    return chart_frame("head", "layer", width=290, height=230, invert_yaxis=True,
                       xlim=(-0.5, H - 0.5), ylim=(-0.5, L - 0.5),
                       xticks=list(range(H)) if H <= 16 else 8, yticks=list(range(L)) if L <= 16 else 8,
                       tools=["tap"])


def head_importance_boxes(data: RunData, state: ExplorerState) -> Marks:
    """The heat map's outlines of the selected heads (`marks.QUADS`, primary red); the title
    names the primary head."""
    heads = [state.head, *_extra_heads(state, None)]
    layer, head = np.divmod(np.asarray(heads), data.num_heads)
    return _quads(head - 0.5, layer - 0.5, head + 0.5, layer + 0.5,
                  f"B1 · layers x heads · {data.head_label(state.head)}",
                  ring=[HIGHLIGHT] + [SECONDARY] * (len(heads) - 1))


def _b2_layout(data: RunData, state: ExplorerState):
    """B2's numbers and vertical layout: (heads, metric, table `[modes, heads]`, bottom and top
    of the bars' axis, span, the glyphs' band `(y0, y1)`)."""
    heads = [state.head, *_extra_heads(state)]
    values = data.mode_values(state.metric, state.scope, state.image, heads, state.scope_class)
    metric = state.metric if state.metric in ("probability", "correct", "loss", "kl") else "probability"
    table = np.array([values[m] for m in PRUNE_MODES])  # [modes, heads]
    finite = table[np.isfinite(table)]
    top = max(1.0 if metric in ("probability", "correct") else 0.0,
              float(finite.max()) if finite.size else 1.0)
    bottom = min(0.0, float(finite.min()) if finite.size else 0.0)
    span = top - bottom or 1.0
    glyph_top = bottom - 0.1 * span
    return heads, metric, table, bottom, top, span, (glyph_top - 0.3 * span, glyph_top)


def partial_pruning_frame(data: RunData) -> hv.Curve:
    """B2's axes; `partial_pruning_bars` and `partial_pruning_glyphs` draw it."""
    return chart_frame("mode", "value", width=320, height=260, xaxis=None,
                       xlim=(-0.6, len(PRUNE_MODES) - 0.4), ylim=(-0.5, 1.0), tools=["tap"])


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
    marks = _quads(x0, np.where(np.isfinite(v), np.minimum(0.0, v), 0.0), x0 + width,
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
    return _quads(x0, y0, x1, y1, fill=fill, alpha=alpha, ring=ring, width=width)


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
    from explorer.live import LiveUnavailable

    try:
        return data.top5(state.image, state.head, state.mode)
    except LiveUnavailable as err:
        return f"**B3** · mode {state.mode} was not swept and cannot be computed live: {err}"


def pruning_curve(data: RunData) -> hv.Overlay:
    """The cumulative pruning curve of the run (static): accuracy as heads are pruned, most
    important first versus least important first. The legend sits under the axes, off the lines;
    the title says how many images were measured and whether they were held out from the
    ranking."""
    c = data.curve
    x = c["num_pruned"]
    metric = str(c.get("metric", "prob_drop"))
    n = int(c["num_images"]) if "num_images" in c else None
    held_out = "ranking_images" in c and not np.isin(c["images"], c["ranking_images"]).any()
    measured = f" · {n} {'held-out ' if held_out else ''}images" if n else ""
    curves = [hv.Curve((x, c["accuracy_most"]), "heads pruned", "accuracy", label="most important first")
              .opts(color=HIGHLIGHT),
              hv.Curve((x, c["accuracy_least"]), "heads pruned", "accuracy", label="least important first")
              .opts(color=CLS_COLOUR)]
    return hv.Overlay(curves).opts(hv.opts.Curve(tools=["hover"], line_width=2),
                                   hv.opts.Overlay(
        title=f"Pruning curve{measured}", xlabel=f"heads pruned (ranked by {metric})",
        width=290, height=320, legend_position="bottom", legend_cols=1, ylim=(0, 1.02), toolbar=None))


# C: strength -------------------------------------------------------------------------------

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
    return Marks(_segments([-0.5], top, [data.depth - 0.5], top, "grey", 0.8, 1.0))


def entropy_highlight(data: RunData, state: ExplorerState) -> Marks:
    """C1: rings on the selected heads; the title names the primary head and the scope."""
    entropy = data.entropy_per_head(state.scope, state.image, state.scope_class).reshape(-1)
    heads = [state.head, *_extra_heads(state, None)]
    return _rings(np.asarray(heads) // data.num_heads, entropy[heads],
                  f"C1 · {data.head_label(state.head)} · "
                  f"{data.scope_label(state.scope, state.image, state.scope_class)}")


def hop_profile_frame(data: RunData) -> hv.Curve:
    """C2's axes; `hop_profile_bars` and `hop_profile_lines` draw it."""
    rings = data.strength["profile"].shape[-1]
    return chart_frame("n-hop neighbours", "strength", width=340, height=280,
                       xticks=list(range(rings)) if rings <= 16 else 10, xlim=(-0.6, rings - 0.4))


def hop_profile_bars(data: RunData, state: ExplorerState) -> Marks:
    """C2: attention strength at each hop d (Chebyshev rings) of the primary head on the selected
    image, as bars (`marks.QUADS`); the y range fits every selected head's profile."""
    heads = [state.head, *_extra_heads(state)]
    profiles = data.hop_profiles(state.image, heads)  # [heads, rings]
    d = np.arange(profiles.shape[1], dtype=np.float64)
    top = float(np.nanmax(profiles)) if np.isfinite(profiles).any() else 1.0
    marks = _quads(d - 0.4, 0.0, d + 0.4, np.nan_to_num(profiles[0]), fill=BAR, alpha=1.0, width=0.0,
                   hop=d, strength=profiles[0])
    return replace(marks, title=f"C2 · strength · {data.head_label(state.head)} · {data.image_label(state.image)}",
                   y_range=(0.0, top * 1.08 or 1.0))


def hop_profile_lines(data: RunData, state: ExplorerState) -> Marks:
    """C2: the other selected heads' profiles as lines (`marks.SEGMENTS`)."""
    heads = _extra_heads(state)
    profiles = data.hop_profiles(state.image, heads) if heads else np.zeros((0, 0))
    return Marks(_polylines([(np.arange(len(p), dtype=np.float64), p) for p in profiles], SECONDARY))


def _entropy_histograms(data: RunData, state: ExplorerState):
    """(edges, counts per selected head `[heads, bins]`, entropies `[heads, N]`) for C3."""
    heads = [state.head, *_extra_heads(state)]
    values = data.entropy_over_images(heads)  # [heads, N]
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    edges = np.linspace(lo, hi, 41)
    return edges, np.stack([np.histogram(v, edges)[0] for v in values]), values


def entropy_distribution_frame(data: RunData) -> hv.Curve:
    """C3's axes; `entropy_distribution` and `entropy_of_image` draw it."""
    return chart_frame("entropy", "count", width=320, height=280, xticks=4, xformatter="%.3g")


def entropy_distribution(data: RunData, state: ExplorerState) -> Marks:
    """C3: the distribution of the primary head's entropy over all images as a histogram
    (`marks.QUADS`); the ranges fit every selected head's distribution."""
    edges, counts, _ = _entropy_histograms(data, state)
    marks = _quads(edges[:-1], 0.0, edges[1:], counts[0], fill=BAR, alpha=0.8, width=0.0,
                   entropy=(edges[:-1] + edges[1:]) / 2, count=counts[0])
    pad = 0.02 * (edges[-1] - edges[0])
    return replace(marks, title=f"C3 · entropy of {data.head_label(state.head)} · {data.num_images} images",
                   x_range=(edges[0] - pad, edges[-1] + pad), y_range=(0.0, float(counts.max()) * 1.08 or 1.0))


def entropy_of_image(data: RunData, state: ExplorerState) -> Marks:
    """C3: the other selected heads' distributions as lines and the selected image's entropy
    under the primary head as a red vertical line (`marks.SEGMENTS`)."""
    edges, counts, values = _entropy_histograms(data, state)
    centres = (edges[:-1] + edges[1:]) / 2
    lines = _polylines([(centres, c.astype(np.float64)) for c in counts[1:]], SECONDARY)
    x = float(values[0, state.image])
    mark = _segments([x], 0.0, [x], float(counts.max()) * 2 + 1, HIGHLIGHT)
    return Marks({k: np.concatenate([lines[k], mark[k]]) for k in mark})


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
    heads = [state.head, *_extra_heads(state, None)]
    return _rings(np.asarray(heads) // data.num_heads, per_head[heads], None, big=12)


# D: patterns -------------------------------------------------------------------------------

def pattern_density(data: RunData, state: ExplorerState) -> hv.Image:
    """D1 background: the density of every (image, head) item on the pattern map, as one
    aggregated image (a 2-D histogram), so the cost does not grow with the number of items."""
    counts, bounds = data.density(state.space)
    shown = np.where(counts > 0, np.log1p(counts), np.nan)
    return hv.Image(shown[::-1], bounds=bounds, kdims=["x", "y"], vdims=["log(1 + items)"]).opts(
        cmap="Greys", alpha=0.8, clipping_colors={"NaN": (0, 0, 0, 0)})


def pattern_heads(data: RunData, state: ExplorerState) -> hv.Points:
    """D1: one dot per head (the mean of its items), coloured by layer, in flat-head order."""
    xy = data.patterns[state.space]["head_xy"]
    layer, head = np.divmod(np.arange(len(xy)), data.num_heads)
    colours = layer_colours(data.depth)
    return hv.Points({"x": xy[:, 0], "y": xy[:, 1], "layer": layer, "head": head,
                      "colour": [colours[l] for l in layer]}, ["x", "y"], ["layer", "head", "colour"]).opts(
        color="colour", size=10, line_color="white", tools=["hover", "tap", "box_select"],
        nonselection_alpha=1.0, selection_alpha=1.0, active_tools=["tap", "box_select"])


def pattern_highlight(data: RunData, state: ExplorerState) -> Marks:
    """D1: rings on the selected heads' dots; the title names the pattern space and the
    primary head."""
    xy = data.patterns[state.space]["head_xy"]
    heads = [state.head, *_extra_heads(state, None)]
    return _rings(xy[heads, 0], xy[heads, 1],
                  f"D1 · {state.space} patterns · {data.head_label(state.head)}", big=19)


def prototype_strip(data: RunData, state: ExplorerState) -> hv.Overlay:
    """D1: the cluster prototypes (decoded k-means centroids) side by side, each scaled to its
    own range; the label is the cluster and its size. Click one to select its heads."""
    protos = data.prototypes(state.space)
    k, h, w = protos.shape
    gap = 1
    mosaic = np.full((h, k * (w + gap)), np.nan)
    for i, p in enumerate(protos):
        lo, hi = np.nanmin(p), np.nanmax(p)
        mosaic[:, i * (w + gap): i * (w + gap) + w] = (p - lo) / (hi - lo or 1.0)
    image = hv.Image(mosaic, bounds=(0, 0, k * (w + gap), h)).opts(
        cmap="Oranges" if state.space == "patch" else "Blues", clipping_colors={"NaN": "white"},
        tools=["tap"])
    sizes = data.cluster_sizes(state.space)
    labels = hv.Labels([((i + 0.5) * (w + gap), h * 1.12, f"{i} ({sizes[i]})") for i in range(k)],
                       ["x", "y"], "text").opts(text_font_size="8pt")
    return (image * labels).opts(hv.opts.Overlay(
        title="D1 · cluster prototypes (click: select their heads)", width=450,
        height=max(90, int(450 / (k * (w + gap)) * h * 1.3) + 40), xaxis=None, yaxis=None,
        ylim=(0, h * 1.3), toolbar=None))


def _head_attention(data: RunData, state: ExplorerState):
    """The primary head's attention `[T, T]` on the selected image and where it came from
    (None and a reason when it cannot be computed)."""
    from explorer.live import LiveUnavailable

    try:
        attention, source = data.attention(state.image)
    except LiveUnavailable as err:
        return None, f"attention not available: {err}"
    return np.asarray(attention[state.layer, state.head_in_layer], np.float64), source


def image_attention_frame(data: RunData) -> hv.Curve:
    """D2's axes (the patch grid); `image_picture`, `image_attention` and
    `image_attention_outlines` draw it. Click a patch to make it the source."""
    rows, cols = data.grid
    return chart_frame("col", "row", width=310, height=310, xaxis=None, yaxis=None,
                       xlim=(0, cols), ylim=(0, rows), tools=["tap"])


def image_picture(data: RunData, state: ExplorerState) -> Marks:
    """D2: the selected image (its thumbnail, `marks.RGBA`) over the patch grid."""
    rows, cols = data.grid
    thumb = np.asarray(data.thumbnails[state.image], np.uint8)
    rgb = np.repeat(thumb, 3, axis=-1) if thumb.shape[-1] == 1 else thumb[..., :3]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    packed = np.ascontiguousarray(rgba[::-1]).view(np.uint32)[..., 0]
    return Marks({"image": [packed], "x": [0.0], "y": [0.0], "dw": [float(cols)], "dh": [float(rows)]})


def image_attention(data: RunData, state: ExplorerState) -> Marks:
    """D2: the selected source token's attention over the patches (`marks.IMAGE`, orange for a
    patch source, blue for CLS)."""
    rows, cols = data.grid
    weights, _ = _source_weights(data, state)
    is_cls = state.source_token < data.num_prefix
    return _image(weights, 0, 0, cols, rows, "Blues" if is_cls else "Oranges", colour_title="attention")


def _source_weights(data: RunData, state: ExplorerState) -> tuple[np.ndarray, str]:
    """The source token's attention over the patches `[rows, cols]` (NaN when unavailable)
    and where the attention came from (or why it is unavailable)."""
    matrix, source = _head_attention(data, state)
    if matrix is None:
        return np.full(data.grid, np.nan), source
    return matrix[state.source_token, data.num_prefix:].reshape(data.grid), source


def image_attention_outlines(data: RunData, state: ExplorerState) -> Marks:
    """D2: the target patches at or above the threshold outlined in blue and the source patch
    (unless it is CLS) in black (`marks.QUADS`); the title names the source token, the head and
    the number of targets."""
    rows, cols = data.grid
    weights, source = _source_weights(data, state)
    token = state.source_token
    targets = [divmod(int(p), cols) for p in np.flatnonzero(weights.reshape(-1) >= state.threshold)]
    cells = targets + ([] if token < data.num_prefix else [divmod(token - data.num_prefix, cols)])
    r = np.asarray([c[0] for c in cells], np.float64)
    c = np.asarray([c[1] for c in cells], np.float64)
    note = {"store": "", "computed live": " (live)"}.get(source, " (attention not available)")
    return _quads(c, rows - r - 1, c + 1, rows - r,
                  ring=[CLS_COLOUR] * len(targets) + ["black"] * (len(cells) - len(targets)),
                  width=[1.5] * len(targets) + [3.0] * (len(cells) - len(targets)),
                  title=f"D2 · {data.token_name(token)} · {data.head_label(state.head)} · "
                 f"{len(targets)} targets{note}")


def attention_links_frame(data: RunData) -> hv.Segments:
    """D3's axes (tokens left to right, sources on top, targets at the bottom); the links are
    drawn by `attention_links`."""
    T = data.num_tokens
    return hv.Segments(([], [], [], []), ["source", "y0", "target", "y1"]).opts(
        width=960, height=280, xlim=(-0.5, T - 0.5), ylim=(-0.08, 1.08), yaxis=None,
        xlabel="token (0 = CLS)", toolbar=None)


def attention_links(data: RunData, state: ExplorerState) -> Marks:
    """D3: links from source tokens (queries, layer l+1, top) to target tokens (keys, layer l,
    bottom) of the primary head whose weight is at or above the threshold (`marks.SEGMENTS`);
    CLS links (either end CLS) blue, patch links orange, the selected source token's links
    black. At most `MAX_LINKS` (the strongest) are drawn."""
    matrix, source = _head_attention(data, state)
    if matrix is None:
        q = k = np.zeros(0, int)
        w = np.zeros(0)
    else:
        q, k = np.nonzero(matrix >= state.threshold)
        w = matrix[q, k]
    total = len(w)
    if total > MAX_LINKS:
        keep = np.argpartition(-w, MAX_LINKS)[:MAX_LINKS]
        q, k, w = q[keep], k[keep], w[keep]
    # One glyph layer, drawn patch links first, then CLS links, then the source token's links.
    kind = np.where(q == state.source_token, 2, np.where((q < data.num_prefix) | (k < data.num_prefix), 1, 0))
    order = np.argsort(kind, kind="stable")
    q, k, w, kind = q[order], k[order], w[order], kind[order]
    shown = f"{len(w)} of {total}" if total > len(w) else f"{total}"
    return Marks({"x0": q.astype(np.float64), "y0": np.ones(len(q)), "x1": k.astype(np.float64),
                  "y1": np.zeros(len(q)), "weight": w,
                  "colour": np.asarray([PATCH_COLOUR, CLS_COLOUR, "black"], dtype=object)[kind],
                  "alpha": np.asarray([0.35, 0.6, 0.9])[kind], "width": np.asarray([1.0, 1.0, 2.0])[kind]},
                 f"D3 · {shown} links ≥ {state.threshold:.3g} · {data.head_label(state.head)} "
                 f"(top: source l+1, bottom: target l)")


def attention_matrix_frame(data: RunData) -> hv.Curve:
    """D4's axes (source rows top to bottom); `attention_matrix` and `attention_matrix_row`
    draw it. Click a row to choose the source token."""
    T = data.num_tokens
    return chart_frame("target", "source", width=340, height=310, invert_yaxis=True,
                       xlim=(-0.5, T - 0.5), ylim=(-0.5, T - 0.5), tools=["tap"])


def attention_matrix(data: RunData, state: ExplorerState) -> Marks:
    """D4: the primary head's token x token attention on the selected image (`marks.IMAGE`,
    rows: source / query tokens, top to bottom; columns: target / key tokens)."""
    matrix, source = _head_attention(data, state)
    T = data.num_tokens
    if matrix is None:
        matrix = np.full((T, T), np.nan)
    # Row 0 (the CLS query) on top: the frame's y axis is inverted.
    return _image(matrix[::-1], -0.5, -0.5, T, T, "Oranges", colour_title="attention",
                  title=f"D4 · attention · {data.head_label(state.head)} · {data.image_label(state.image)}")


def attention_matrix_row(data: RunData, state: ExplorerState) -> Marks:
    """D4: a band on the source token's row (`marks.QUADS`)."""
    t = float(state.source_token)
    return _quads([-0.5], t - 0.5, data.num_tokens - 0.5, t + 0.5, fill=CLS_COLOUR, alpha=0.25, width=0.0)


def attention_histogram_frame(data: RunData) -> hv.Curve:
    """D5's axes (log counts); `attention_histogram` and `attention_threshold` draw it."""
    return chart_frame("attention", "count", logy=True, width=300, height=240, xlim=(0, 1), ylim=(0.5, 10))


def attention_histogram(data: RunData, state: ExplorerState) -> Marks:
    """D5: the histogram of the primary head's attention values on the selected image, log
    counts (`marks.QUADS`); click to move the threshold."""
    matrix, _ = _head_attention(data, state)
    values = np.zeros(0) if matrix is None else matrix.reshape(-1)
    edges = np.linspace(0.0, 1.0, 51)
    counts = np.histogram(values, edges)[0]
    marks = _quads(edges[:-1], 0.5, edges[1:], np.maximum(counts, 0.5), fill=PATCH_COLOUR, alpha=1.0, width=0.0,
                   attention=(edges[:-1] + edges[1:]) / 2, count=counts)
    return replace(marks, y_range=(0.5, max(2.0 * float(counts.max(initial=1)), 10.0)))


def attention_threshold(data: RunData, state: ExplorerState) -> Marks:
    """D5: the threshold as a vertical line (`marks.SEGMENTS`); the title counts the values at
    or above it."""
    matrix, _ = _head_attention(data, state)
    above = 0 if matrix is None else int((matrix >= state.threshold).sum())
    t = float(state.threshold)
    return Marks({"x0": [t], "y0": [0.5], "x1": [t], "y1": [1e12], "colour": np.asarray([HIGHLIGHT], dtype=object),
                  "alpha": [1.0], "width": [2.0]},
                 f"D5 · {above} values ≥ {state.threshold:.3g} · {data.head_label(state.head)}")
