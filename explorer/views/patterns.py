"""D: attention patterns (D1 map and prototypes, D2 image attention, D3 links, D4 matrix, D5 histogram)."""

from __future__ import annotations

from dataclasses import replace

import holoviews as hv
import numpy as np

from explorer.data import RunData
from explorer.marks import Marks
from explorer.state import ExplorerState
from explorer.figures import Frame
from explorer.views.glyphs import (CLS_COLOUR, HIGHLIGHT, MAP_SIZE, MAX_LINKS, PATCH_COLOUR, SOURCE_TARGETS,
                                   bokeh_element, extra_heads, image_glyph, layer_colours, palette, quads, rings)


def pattern_frame(data: RunData) -> Frame:
    """D1's figure: a map without axes; click or box-select heads, scroll to zoom (the density
    is aggregated again for the part shown)."""
    return Frame(width=MAP_SIZE[0], height=MAP_SIZE[1], axes=False,
                 tools=("tap", "box_select", "wheel_zoom", "pan", "reset"), active=("tap", "box_select"),
                 toolbar="above")


# D1's heads: dots with a white rim, coloured by layer.
HEAD_DOTS = ("scatter", dict(x="x", y="y", marker="circle", size=10, fill_color="fill", line_color="white"))
# The density's pixel size on the screen: D1 aggregates its items into bins of about this many
# pixels, whatever part of the map is shown.
DENSITY_PIXELS = 5
# The width of D1's prototypes, beside D1.
PROTOTYPES_WIDTH = 450


def pattern_density(data: RunData, state: ExplorerState, shown: tuple[float, float, float, float] | None = None,
                    size: tuple[int, int] = MAP_SIZE) -> Marks:
    """D1 background: the density of every (image, head) item on the pattern map, aggregated
    (`RunData.density`, datashader) into bins of `DENSITY_PIXELS` screen pixels over the part
    of the map `shown` (left, right, bottom, top; None: all of it) of a figure of `size`
    pixels, so the cost does not grow with the number of items and a zoom sharpens it
    (`marks.IMAGE`, log(1 + items), empty bins transparent). Sets the figure's ranges to
    that part."""
    bins = (max(8, size[0] // DENSITY_PIXELS), max(8, size[1] // DENSITY_PIXELS))
    counts, (x0, y0, x1, y1) = data.density(state.space, bins, shown)
    values = np.where(counts > 0, np.log1p(counts), np.nan)
    finite = values[np.isfinite(values)]
    high = float(finite.max()) if finite.size else 1.0
    return Marks({"image": [values], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]},
                 x_range=(x0, x1), y_range=(y0, y1), palette=palette("Greys"), colour_range=(0.0, high))


def pattern_heads(data: RunData, state: ExplorerState) -> Marks:
    """D1: one dot per head (the mean of its items; `HEAD_DOTS`), coloured by layer, in
    flat-head order (so a selection's indices are flat head indices)."""
    xy = np.asarray(data.patterns[state.space]["head_xy"], np.float64)
    layer, head = np.divmod(np.arange(len(xy)), data.num_heads)
    colours = np.asarray(layer_colours(data.depth), dtype=object)
    return Marks({"x": xy[:, 0], "y": xy[:, 1], "fill": colours[layer], "layer": layer, "head": head})


def pattern_highlight(data: RunData, state: ExplorerState) -> Marks:
    """D1: rings on the selected heads' dots; the title names the pattern space and the
    primary head."""
    xy = data.patterns[state.space]["head_xy"]
    heads = [state.head, *extra_heads(state, None)]
    return rings(xy[heads, 0], xy[heads, 1],
                 f"D1 · {state.space} patterns · {data.head_label(state.head)}", big=19)


@bokeh_element
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
        title="D1 · cluster prototypes (click: select their heads)", width=PROTOTYPES_WIDTH,
        height=max(90, int(PROTOTYPES_WIDTH / (k * (w + gap)) * h * 1.3) + 40), xaxis=None, yaxis=None,
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


def image_attention_frame(data: RunData) -> Frame:
    """D2's axes (the patch grid); `image_picture`, `image_attention` and
    `image_attention_outlines` draw it. Click a patch to make it the source."""
    rows, cols = data.grid
    return Frame("col", "row", width=310, height=310, x_axis=False, y_axis=False,
                 x_range=(0, cols), y_range=(0, rows), tools=("tap",))


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
    return image_glyph(weights, 0, 0, cols, rows, "Blues" if is_cls else "Oranges", colour_title="attention")


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
    return quads(c, rows - r - 1, c + 1, rows - r,
                 ring=[CLS_COLOUR] * len(targets) + ["black"] * (len(cells) - len(targets)),
                 width=[1.5] * len(targets) + [3.0] * (len(cells) - len(targets)),
                 title=f"D2 · {data.token_name(token)} · {data.head_label(state.head)} · "
                f"{len(targets)} targets{note}")


def attention_links_frame(data: RunData) -> Frame:
    """D3's axes (tokens left to right, sources on top, targets at the bottom); the links are
    drawn by `attention_links`."""
    T = data.num_tokens
    return Frame(f"token (0 = {data.token_name(0)})", None, width=960, height=280, x_range=(-0.5, T - 0.5),
                 y_range=(-0.08, 1.08), y_axis=False)


def _links(matrix: np.ndarray, state: ExplorerState) -> tuple[np.ndarray, np.ndarray, int]:
    """The (source, target) token pairs D3 draws from `matrix` `[T, T]` and how many it chose
    from. `state.links == "source"`: the source token's links at or above the threshold and
    its `SOURCE_TARGETS` strongest targets; "all": every link at or above the threshold, the
    `MAX_LINKS` strongest of them."""
    if state.links == "source":
        row = matrix[state.source_token]
        k = np.union1d(np.nonzero(row >= state.threshold)[0], np.argsort(-row, kind="stable")[:SOURCE_TARGETS])
        return np.full(len(k), state.source_token), k, len(k)
    q, k = np.nonzero(matrix >= state.threshold)
    total = len(q)
    if total > MAX_LINKS:
        keep = np.argpartition(-matrix[q, k], MAX_LINKS)[:MAX_LINKS]
        q, k = q[keep], k[keep]
    return q, k, total


def attention_links(data: RunData, state: ExplorerState) -> Marks:
    """D3: links from source tokens (queries, layer l+1, top) to target tokens (keys, layer l,
    bottom) of the primary head (`marks.SEGMENTS`), as `_links` chooses them (by default the
    selected source token's: a few links that can be followed); CLS links (either end CLS)
    blue, patch links orange, the selected source token's links black. The title says how
    many are drawn and how to narrow or widen them."""
    matrix, source = _head_attention(data, state)
    q, k, total = (np.zeros(0, int), np.zeros(0, int), 0) if matrix is None else _links(matrix, state)
    w = matrix[q, k] if matrix is not None else np.zeros(0)
    # One glyph layer, drawn patch links first, then CLS links, then the source token's links.
    kind = np.where(q == state.source_token, 2, np.where((q < data.num_prefix) | (k < data.num_prefix), 1, 0))
    order = np.argsort(kind, kind="stable")
    q, k, w, kind = q[order], k[order], w[order], kind[order]
    head = data.head_label(state.head)
    if state.links == "source":
        title = (f"D3 · {len(w)} links of {data.token_name(state.source_token)} (≥ {state.threshold:.3g} "
                 f"or among its {SOURCE_TARGETS} strongest) · {head} (top: source l+1, bottom: target l)")
    else:
        shown = f"{len(w)} of {total} (the strongest; raise the threshold)" if total > len(w) else f"{total}"
        title = f"D3 · {shown} links ≥ {state.threshold:.3g} · {head} (top: source l+1, bottom: target l)"
    return Marks({"x0": q.astype(np.float64), "y0": np.ones(len(q)), "x1": k.astype(np.float64),
                  "y1": np.zeros(len(q)), "weight": w,
                  "colour": np.asarray([PATCH_COLOUR, CLS_COLOUR, "black"], dtype=object)[kind],
                  "alpha": np.asarray([0.35, 0.6, 0.9])[kind], "width": np.asarray([1.0, 1.0, 2.0])[kind]},
                 title)


def attention_matrix_frame(data: RunData) -> Frame:
    """D4's axes (source rows top to bottom); `attention_matrix` and `attention_matrix_row`
    draw it. Click a row to choose the source token."""
    T = data.num_tokens
    return Frame("target", "source", width=340, height=310, flip_y=True,
                 x_range=(-0.5, T - 0.5), y_range=(-0.5, T - 0.5), tools=("tap",))


def attention_matrix(data: RunData, state: ExplorerState) -> Marks:
    """D4: the primary head's token x token attention on the selected image (`marks.IMAGE`,
    rows: source / query tokens, top to bottom; columns: target / key tokens)."""
    matrix, source = _head_attention(data, state)
    T = data.num_tokens
    if matrix is None:
        matrix = np.full((T, T), np.nan)
    # Row 0 (the CLS query) on top: the frame's y axis is inverted.
    return image_glyph(matrix[::-1], -0.5, -0.5, T, T, "Oranges", colour_title="attention",
                       title=f"D4 · attention · {data.head_label(state.head)} · {data.image_label(state.image)}")


def attention_matrix_row(data: RunData, state: ExplorerState) -> Marks:
    """D4: a band on the source token's row (`marks.QUADS`)."""
    t = float(state.source_token)
    return quads([-0.5], t - 0.5, data.num_tokens - 0.5, t + 0.5, fill=CLS_COLOUR, alpha=0.25, width=0.0)


def attention_histogram_frame(data: RunData) -> Frame:
    """D5's axes (log counts); `attention_histogram` and `attention_threshold` draw it. Click
    to set the threshold."""
    return Frame("attention", "count", log_y=True, width=300, height=240, x_range=(0, 1), y_range=(0.5, 10),
                 tools=("tap",))


def attention_histogram(data: RunData, state: ExplorerState) -> Marks:
    """D5: the histogram of the primary head's attention values on the selected image, log
    counts (`marks.QUADS`); click to move the threshold."""
    matrix, _ = _head_attention(data, state)
    values = np.zeros(0) if matrix is None else matrix.reshape(-1)
    edges = np.linspace(0.0, 1.0, 51)
    counts = np.histogram(values, edges)[0]
    marks = quads(edges[:-1], 0.5, edges[1:], np.maximum(counts, 0.5), fill=PATCH_COLOUR, alpha=1.0, width=0.0,
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
