"""The views of one run for one session, wired together (`ExplorerViews`): every view's
figure and marks layers, the clicks and box selections that change the session's
`ExplorerState`, and the titles above the figures.

Every view a click changes is a plain Bokeh figure (`explorer.figures`) with its marks layers
(`explorer.marks`); a click on it is a Bokeh event (`Tap`, a change of a data source's
selection) handled here. The pruning curve and the D1 prototypes are HoloViews elements; the
prototypes' click is a HoloViews `Tap` stream."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
from bokeh.events import RangesUpdate, Tap
from bokeh.models import BoxSelectTool, TapTool
from holoviews import streams

from explorer import views
from explorer.data import RunData
from explorer.figures import new_figure
from explorer.marks import BANDS, DOTS, IMAGE, QUADS, RGBA, RINGS, SEGMENTS, MarksLayer
from explorer.state import ExplorerState
from explorer.titles import FigureTitle
from vit_jax_va.masks import PRUNE_MODES

SELECTION = ["head", "heads"]
DETAIL = ["image", "head", "source_token", "threshold"]
IMPORTANCE = ["metric", "scope", "scope_class", "image", *SELECTION]
VALUES = ["metric", "scope", "scope_class", "image"]
# The Bokeh views: each one's empty figure (a `Frame` function of explorer.views) and its marks
# layers (`ExplorerViews.marks`), drawn in this order.
FRAMES = {"A": views.image_overview_frame, "B1": views.head_importance_frame,
          "B1 heat map": views.head_importance_heatmap_frame, "B2": views.partial_pruning_frame,
          "C1": views.entropy_frame, "C2": views.hop_profile_frame, "C3": views.entropy_distribution_frame,
          "distance": views.distance_frame, "D1": views.pattern_frame, "D2": views.image_attention_frame,
          "D3": views.attention_links_frame, "D4": views.attention_matrix_frame, "D5": views.attention_histogram_frame}
VIEW_MARKS = {"A": ["A points", "A"], "B1": ["B1 line", "B1 values", "B1"],
              "B1 heat map": ["B1 heat map", "B1 heat map boxes"], "B2": ["B2", "B2 glyphs"],
              "C1": ["C1 ceiling", "C1 values", "C1"], "C2": ["C2", "C2 lines"], "C3": ["C3", "C3 lines"],
              "distance": ["distance band", "distance line", "distance points", "distance"],
              "D1": ["D1 density", "D1 heads", "D1"], "D2": ["D2", "D2 attention", "D2 outlines"],
              "D3": ["D3"], "D4": ["D4", "D4 row"], "D5": ["D5", "D5 threshold"]}
# The layer of each view whose items a click or a box selects (A: images; C1, D1: heads).
PICKED = {"A": "A points", "C1": "C1 values", "D1": "D1 heads"}
# The views that are HoloViews elements (`ExplorerViews.plots`).
HOLOVIEWS_VIEWS = ["curve", "D1 prototypes"]
# The views that are figures, each with its title above it (`ExplorerViews.titles`).
TITLED_VIEWS = [*FRAMES, *HOLOVIEWS_VIEWS]


class ExplorerViews:
    """The views of one run for one session, with their clicks wired to the state."""

    def __init__(self, data: RunData, state: ExplorerState):
        self.data, self.state = data, state
        d, s = data, state
        self.streams: dict[str, streams.Stream] = {}
        layer = lambda fn, params, glyph=RINGS, tooltips=None, **image: MarksLayer(  # noqa: E731
            fn, d, s, params, glyph=glyph, tooltips=tooltips, **image)
        # D1's density is aggregated for the part of the map shown, per pattern space.
        self._d1_shown: dict[str, tuple[float, float, float, float]] = {}
        d1 = FRAMES["D1"](d)
        d1_size = (d1.width, d1.height)
        self.marks = {
            "A points": layer(views.image_points, [], views.images.POINTS, views.images.HOVER,
                              legend="cls" if len(d.class_names) <= 12 else None),
            "A": layer(views.image_marker, ["image"]),
            "B1 line": layer(views.head_importance_line, VALUES, SEGMENTS),
            "B1 values": layer(views.head_importance_values, VALUES, DOTS,
                               [("head", "L@layer H@head"), ("value", "@y{0.0000}")]),
            "B1": layer(views.head_importance_marks, IMPORTANCE),
            "B1 heat map": layer(views.head_importance_cells, VALUES, IMAGE,
                                 [("layer", "$y{0}"), ("head", "$x{0}"), ("value", "@image{0.0000}")],
                                 colours="linear", colour_bar=True),
            "B1 heat map boxes": layer(views.head_importance_boxes, SELECTION, QUADS),
            "B2": layer(views.partial_pruning_bars, IMPORTANCE, QUADS,
                        [("head", "@head"), ("mode", "@mode"), ("value", "@value{0.0000}")]),
            "B2 glyphs": layer(views.partial_pruning_glyphs, [*IMPORTANCE, "mode"], QUADS),
            "C1 ceiling": layer(views.entropy_ceiling, [], SEGMENTS),
            "C1 values": layer(views.entropy_points, ["scope", "scope_class", "image"], DOTS,
                               [("head", "L@layer H@head"), ("entropy", "@y{0.000}")]),
            "C1": layer(views.entropy_highlight, ["scope", "scope_class", "image", *SELECTION]),
            "C2": layer(views.hop_profile_bars, ["image", *SELECTION], QUADS,
                        [("hop", "@hop"), ("strength", "@strength{0.0000}")]),
            "C2 lines": layer(views.hop_profile_lines, ["image", *SELECTION], SEGMENTS),
            "C3": layer(views.entropy_distribution, SELECTION, QUADS,
                        [("entropy", "@entropy{0.000}"), ("images", "@count")]),
            "C3 lines": layer(views.entropy_of_image, ["image", *SELECTION], SEGMENTS),
            "distance band": layer(views.distance_band, [], BANDS),
            "distance line": layer(views.distance_line, [], SEGMENTS),
            "distance points": layer(views.distance_points, [], (DOTS[0], {**DOTS[1], "alpha": 0.6})),
            "distance": layer(views.distance_marks, SELECTION),
            "D1 density": layer(lambda d, s: views.pattern_density(d, s, self._d1_shown.get(s.space), d1_size),
                                ["space"], (IMAGE[0], {**IMAGE[1], "global_alpha": 0.8}), colours="linear"),
            "D1 heads": layer(views.pattern_heads, ["space"], views.patterns.HEAD_DOTS,
                              [("head", "L@layer H@head")]),
            "D1": layer(views.pattern_highlight, ["space", *SELECTION]),
            "D2": layer(views.image_picture, ["image"], RGBA),
            "D2 attention": layer(views.image_attention, ["image", "head", "source_token"],
                                  (IMAGE[0], {**IMAGE[1], "global_alpha": 0.65}),
                                  [("attention", "@image{0.0000}")], colours="linear", colour_bar=True),
            "D2 outlines": layer(views.image_attention_outlines, DETAIL, QUADS),
            "D3": layer(views.attention_links, [*DETAIL, "links"], SEGMENTS),
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
        self.figures: dict[str, object] = {}
        for view, frame in FRAMES.items():
            figure = new_figure(frame(d))
            renderers = {name: self.marks[name].draw_on(figure) for name in VIEW_MARKS[view]}
            if view in PICKED:  # a tap or a box picks the items of this layer alone
                for tool in figure.tools:
                    if isinstance(tool, (TapTool, BoxSelectTool)):
                        tool.renderers = [renderers[PICKED[view]]]
            self.titles[view].follow(figure)
            self.figures[view] = figure

        self._picked("A", self._image_selected)
        self._picked("C1", self._heads_selected)
        self._picked("D1", self._heads_selected)
        for view, callback in (("B1", self._b1_tap), ("B1 heat map", self._heatmap_tap), ("B2", self._b2_tap),
                               ("D2", self._d2_tap), ("D4", self._d4_tap), ("D5", self._d5_tap)):
            self.figures[view].on_event(Tap, lambda event, callback=callback: callback(event.x, event.y))
        self.figures["D1"].on_event(RangesUpdate, self._d1_zoomed)

        self.b3 = pn.pane.Markdown(pn.bind(lambda *_: views.top5_markdown(d, s), s.param.image,
                                           s.param.head, s.param.mode), width=330)
        self.curve = views.pruning_curve(d).opts(hv.opts.Overlay(hooks=[self.titles["curve"].hook]))
        # The strip's size follows the pattern space: axis ranges follow each frame.
        strip = lambda **_: views.prototype_strip(d, s).map(lambda e: e.opts(framewise=True), hv.Element)  # noqa: E731
        self.prototypes = hv.DynamicMap(strip, streams=[
            streams.Params(s, ["space"]), self._on("D1 prototypes", streams.Tap(), self._prototype_tap)]).opts(
            hv.opts.Overlay(hooks=[self.titles["D1 prototypes"].hook]))

    def _on(self, name: str, stream, callback):
        stream.add_subscriber(callback)
        self.streams[name] = stream
        return stream

    def _picked(self, view: str, callback) -> None:
        """Call `callback(indices)` when a tap or a box selects items of the view's picked layer."""
        source = self.marks[PICKED[view]].source(self.figures[view])
        source.selected.on_change("indices", lambda attr, old, new: callback(new))

    def _d1_zoomed(self, event) -> None:
        """D1 was zoomed or panned: aggregate its density again for the part shown."""
        if None in (event.x0, event.x1, event.y0, event.y1):
            return
        self._d1_shown[self.state.space] = (event.x0, event.x1, event.y0, event.y1)
        self.marks["D1 density"].redraw()

    @property
    def plots(self) -> dict[str, object]:
        """The views that are HoloViews elements, by name (for rendering and tests)."""
        return {"curve": self.curve, "D1 prototypes": self.prototypes}

    # Click callbacks: a click sets the state; the views follow ------------------------------

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
