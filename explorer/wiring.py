"""The views of one run for one session, wired together (`ExplorerViews`): every view's
HoloViews frame and marks layers, the streams that turn clicks and box selections into changes
of the session's `ExplorerState`, and the titles above the figures."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
from holoviews import streams

from explorer import views
from explorer.data import RunData
from explorer.marks import DOTS, IMAGE, QUADS, RGBA, RINGS, SEGMENTS, MarksLayer
from explorer.state import ExplorerState
from explorer.titles import FigureTitle
from vit_jax_va.masks import PRUNE_MODES


def dynamic(fn, data: RunData, state: ExplorerState, params: list[str],
            clicks: streams.Stream | None = None) -> hv.DynamicMap:
    """A DynamicMap of `fn(data, state)` that re-renders when any of `params` changes (the
    D1 views, which change only with the pattern space); axis and colour ranges follow each
    frame. `clicks` (a `Tap`) is given to the DynamicMap itself rather than linked by
    `source=`: HoloViews does not attach a sourced stream to a DynamicMap that returns an
    overlay.
    """
    def frame(**_):
        return fn(data, state).map(lambda e: e.opts(framewise=True), hv.Element)

    return hv.DynamicMap(frame, streams=[streams.Params(state, params), *([clicks] if clicks else [])])


SELECTION = ["head", "heads"]
DETAIL = ["image", "head", "source_token", "threshold"]
# The marks layers of each view (`ExplorerViews.marks`), drawn in this order.
VIEW_MARKS = {"A": ["A"], "B1": ["B1 line", "B1 values", "B1"], "B1 heat map": ["B1 heat map", "B1 heat map boxes"],
              "B2": ["B2", "B2 glyphs"], "C1": ["C1 values", "C1 ceiling", "C1"], "C2": ["C2", "C2 lines"], "C3": ["C3", "C3 lines"],
              "distance": ["distance"], "D1": ["D1"], "D2": ["D2", "D2 attention", "D2 outlines"],
              "D3": ["D3"], "D4": ["D4", "D4 row"], "D5": ["D5", "D5 threshold"]}
IMPORTANCE = ["metric", "scope", "scope_class", "image", *SELECTION]
# The views that are figures, each with its title above it (`ExplorerViews.titles`).
TITLED_VIEWS = [*VIEW_MARKS, "curve", "D1 prototypes"]


class ExplorerViews:
    """The views of one run for one session, with their streams wired to the state."""

    def __init__(self, data: RunData, state: ExplorerState):
        self.data, self.state = data, state
        d, s = data, state
        self.streams: dict[str, streams.Stream] = {}
        # Marks layers (explorer.marks): the selection marks of the views that show every head
        # or image, and the views that are cheap to draw but change with every selection (B2,
        # C2, C3, D3, D5), drawn into Bokeh directly instead of re-rendered by HoloViews.
        # Several layers of one view are drawn in the order given.
        layer = lambda fn, params, glyph=RINGS, tooltips=None, **image: MarksLayer(  # noqa: E731
            fn, d, s, params, glyph=glyph, tooltips=tooltips, **image)
        values = ["metric", "scope", "scope_class", "image"]
        self.marks = {
            "A": layer(views.image_marker, ["image"]),
            "B1 line": layer(views.head_importance_line, values, SEGMENTS),
            "B1 values": layer(views.head_importance_values, values, DOTS,
                               [("head", "L@layer H@head"), ("value", "@y{0.0000}")]),
            "B1": layer(views.head_importance_marks, IMPORTANCE),
            "B1 heat map": layer(views.head_importance_cells, values, IMAGE,
                                 [("layer", "$y{0}"), ("head", "$x{0}"), ("value", "@image{0.0000}")],
                                 colours="linear", colour_bar=True),
            "B1 heat map boxes": layer(views.head_importance_boxes, SELECTION, QUADS),
            "B2": layer(views.partial_pruning_bars, IMPORTANCE, QUADS,
                        [("head", "@head"), ("mode", "@mode"), ("value", "@value{0.0000}")]),
            "B2 glyphs": layer(views.partial_pruning_glyphs, [*IMPORTANCE, "mode"], QUADS),
            "C1 values": layer(views.entropy_values, ["scope", "scope_class", "image"], None),
            "C1 ceiling": layer(views.entropy_ceiling, [], SEGMENTS),
            "C1": layer(views.entropy_highlight, ["scope", "scope_class", "image", *SELECTION]),
            "C2": layer(views.hop_profile_bars, ["image", *SELECTION], QUADS,
                        [("hop", "@hop"), ("strength", "@strength{0.0000}")]),
            "C2 lines": layer(views.hop_profile_lines, ["image", *SELECTION], SEGMENTS),
            "C3": layer(views.entropy_distribution, SELECTION, QUADS,
                        [("entropy", "@entropy{0.000}"), ("images", "@count")]),
            "C3 lines": layer(views.entropy_of_image, ["image", *SELECTION], SEGMENTS),
            "distance": layer(views.distance_marks, SELECTION),
            "D1": layer(views.pattern_highlight, ["space", *SELECTION]),
            "D2": layer(views.image_picture, ["image"], RGBA),
            "D2 attention": layer(views.image_attention, ["image", "head", "source_token"],
                                  (IMAGE[0], {**IMAGE[1], "global_alpha": 0.65}),
                                  [("attention", "@image{0.0000}")], colours="linear", colour_bar=True),
            "D2 outlines": layer(views.image_attention_outlines, DETAIL, QUADS),
            "D3": layer(views.attention_links, DETAIL, SEGMENTS),
            "D4": layer(views.attention_matrix, ["image", "head"], IMAGE,
                        [("source", "$y{0}"), ("target", "$x{0}"), ("attention", "@image{0.0000}")],
                        colours="eq_hist", colour_bar=True, nan_colour="white"),
            "D4 row": layer(views.attention_matrix_row, ["source_token"], QUADS),
            "D5": layer(views.attention_histogram, ["image", "head"], QUADS,
                        [("attention", "@attention{0.00}"), ("count", "@count")]),
            "D5 threshold": layer(views.attention_threshold, ["image", "head", "threshold"], SEGMENTS),
        }
        # Every view's title is drawn as HTML above its figure (explorer.titles), after the
        # marks layers have written it.
        self.titles = {view: FigureTitle() for view in TITLED_VIEWS}
        hooks = {view: [*(self.marks[name].hook for name in VIEW_MARKS.get(view, ())), self.titles[view].hook]
                 for view in TITLED_VIEWS}

        # A
        points = views.image_points(d).opts(hooks=hooks["A"])
        self.image_overview = points
        self._on("A", streams.Selection1D(source=points), self._image_selected)

        # B
        self.b1_line = views.head_importance_frame(d).opts(hooks=hooks["B1"])
        self._on("B1", streams.Tap(source=self.b1_line), self._b1_tap)
        self.b1_heatmap = views.head_importance_heatmap_frame(d).opts(hooks=hooks["B1 heat map"])
        self._on("B1 heat map", streams.Tap(source=self.b1_heatmap), self._heatmap_tap)
        self.b2 = views.partial_pruning_frame(d).opts(hooks=hooks["B2"])
        self._on("B2", streams.Tap(source=self.b2), self._b2_tap)
        self.b3 = pn.pane.Markdown(pn.bind(lambda *_: views.top5_markdown(d, s), s.param.image,
                                           s.param.head, s.param.mode), width=330)
        self.curve = views.pruning_curve(d).opts(hv.opts.Overlay(hooks=hooks["curve"]))

        # C
        self.c1 = views.entropy_points(d, s).opts(
            width=340, height=280, xlabel="layer", ylabel="entropy (nats)", toolbar="right",
            xticks=list(range(d.depth)) if d.depth <= 24 else 12, xlim=(-0.5, d.depth - 0.5), hooks=hooks["C1"])
        self._on("C1", streams.Selection1D(source=self.c1), self._heads_selected)
        self.c2 = views.hop_profile_frame(d).opts(hooks=hooks["C2"])
        self.c3 = views.entropy_distribution_frame(d).opts(hooks=hooks["C3"])
        self.trend = views.distance_trend(d).opts(hv.opts.Overlay(hooks=hooks["distance"]))

        # D
        density = dynamic(views.pattern_density, d, s, ["space"])
        d1_heads = dynamic(views.pattern_heads, d, s, ["space"])
        self.d1 = (density * d1_heads).opts(hv.opts.Overlay(
            width=450, height=420, xaxis=None, yaxis=None, toolbar="above", hooks=hooks["D1"]))
        self._on("D1", streams.Selection1D(source=d1_heads), self._heads_selected)
        self.prototypes = dynamic(views.prototype_strip, d, s, ["space"],
                                  self._on("D1 prototypes", streams.Tap(), self._prototype_tap)).opts(
            hv.opts.Overlay(hooks=hooks["D1 prototypes"]))
        self.d2 = views.image_attention_frame(d).opts(hooks=hooks["D2"])
        self._on("D2", streams.Tap(source=self.d2), self._d2_tap)
        self.d3 = views.attention_links_frame(d).opts(hooks=hooks["D3"])
        self.d4 = views.attention_matrix_frame(d).opts(hooks=hooks["D4"])
        self._on("D4", streams.Tap(source=self.d4), self._d4_tap)
        self.d5 = views.attention_histogram_frame(d).opts(hooks=hooks["D5"])
        self._on("D5", streams.Tap(source=self.d5), self._d5_tap)

    def _on(self, name: str, stream, callback):
        stream.add_subscriber(callback)
        self.streams[name] = stream
        return stream

    @property
    def plots(self) -> dict[str, object]:
        """Every HoloViews view by name (for rendering and tests)."""
        return {"A": self.image_overview, "B1": self.b1_line, "B1 heat map": self.b1_heatmap,
                "B2": self.b2, "curve": self.curve, "C1": self.c1, "C2": self.c2, "C3": self.c3,
                "distance": self.trend, "D1": self.d1, "D1 prototypes": self.prototypes,
                "D2": self.d2, "D3": self.d3, "D4": self.d4, "D5": self.d5}

    # Stream callbacks: a click sets the state; the views follow -----------------------------

    def _image_selected(self, index) -> None:
        if index:
            self.state.select_image(index[0])

    def _heads_selected(self, index) -> None:
        if not index:
            return
        chosen = sorted(int(i) for i in index)
        if self.state.head in chosen:  # keep the primary head when a brush still covers it
            chosen.remove(self.state.head)
            chosen.insert(0, self.state.head)
        self.state.select_heads(chosen)

    def _b1_tap(self, x, y) -> None:
        if x is not None:
            self.state.select_head(int(np.clip(round(x), 0, self.data.num_heads_total - 1)))

    def _heatmap_tap(self, x, y) -> None:
        if x is None or y is None:
            return
        head, layer = round(x), round(y)
        if 0 <= head < self.data.num_heads and 0 <= layer < self.data.depth:
            self.state.select_head(layer * self.data.num_heads + head)

    def _b2_tap(self, x, y) -> None:
        if x is not None and -0.5 <= x < len(PRUNE_MODES) - 0.5:
            self.state.mode = PRUNE_MODES[int(round(x))]

    def _prototype_tap(self, x, y) -> None:
        if x is None:
            return
        _, w = self.data.prototypes(self.state.space).shape[1:]
        heads = self.data.heads_of_cluster(self.state.space, int(x // (w + 1)))
        if heads:
            self.state.select_heads(heads)

    def _d2_tap(self, x, y) -> None:
        rows, cols = self.data.grid
        if x is None or y is None or not (0 <= x < cols and 0 <= y < rows):
            return
        row, col = rows - 1 - int(y), int(x)
        self.state.source_token = self.data.num_prefix + row * cols + col

    def _d4_tap(self, x, y) -> None:
        if y is not None and -0.5 <= y < self.data.num_tokens - 0.5:
            self.state.source_token = int(round(y))

    def _d5_tap(self, x, y) -> None:
        if x is not None:
            self.state.threshold = float(np.clip(x, 0.0, 1.0))
