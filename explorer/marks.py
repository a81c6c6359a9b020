"""Selection marks drawn straight into Bokeh: the rings and outlines that show which heads and
which image are selected, and the title that names them.

A head click changes nothing in B1, the heat map, C1, D1 or the distance trend but these marks.
Re-rendering such a view through HoloViews re-processes its whole overlay (ranges, styles, every
layer) and costs tens of milliseconds per view; rewriting a marks layer's data source costs well
under one. So a marks layer is a Bokeh glyph renderer of its own: a HoloViews hook adds it to the
view's figure when HoloViews draws the figure (and puts it back if HoloViews rebuilds it), and a
param watcher on the session's `ExplorerState` rewrites its columns and the figure's title when
the selection changes (for a served page, on the server's next tick, when the document may be
changed). The HoloViews layers under it are untouched.

A view function for marks returns a `Marks` (columns and title); `RINGS`, `QUADS` and `SEGMENTS` are the glyphs the explorer draws them with. D3's links, which change with every
selection and have no range to follow, are a marks layer too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from bokeh.models import ColumnDataSource, FixedTicker, HoverTool

# (Bokeh glyph method, its arguments). Columns: x, y, ring (line colour), size.
RINGS = ("scatter", dict(x="x", y="y", marker="circle", size="size", fill_alpha=0,
                         line_color="ring", line_width=3))
# Boxes, filled and/or outlined; columns x0, y0, x1, y1, fill, alpha (of the fill), ring (line
# colour), width (line width; 0: no outline).
QUADS = ("quad", dict(left="x0", right="x1", bottom="y0", top="y1", fill_color="fill",
                      fill_alpha="alpha", line_color="ring", line_width="width"))
# Line segments; columns x0, y0, x1, y1, colour, alpha, width.
SEGMENTS = ("segment", dict(x0="x0", y0="y0", x1="x1", y1="y1", line_color="colour",
                            line_alpha="alpha", line_width="width"))


@dataclass(frozen=True)
class Marks:
    """One frame of a marks layer: the columns of its glyph (equal lengths) and, for the figure
    it is drawn in, the title, the axis ranges `(start, end)`, the y ticks and the y label (None:
    leave them as they are). A view drawn wholly in marks sets its ranges itself."""

    columns: dict[str, np.ndarray]
    title: str | None = None
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    y_ticks: list[float] | None = None
    y_label: str | None = None

    def __post_init__(self):
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"marks columns of different lengths: {lengths}")


@dataclass
class MarksLayer:
    """A marks layer of one session: `fn(data, state) -> Marks` drawn with `glyph` (`RINGS`,
    `QUADS`, `SEGMENTS`) on every figure whose HoloViews plot calls `hook`, redrawn when any of `params` of
    the state changes.

    Use `element.opts(hooks=[layer.hook])` on the view (on the overlay for an overlay), so the
    hook runs after HoloViews has drawn or updated the figure."""

    fn: Callable
    data: object = field(repr=False)
    state: object = field(repr=False)
    params: list[str]
    glyph: tuple[str, dict] = RINGS
    tooltips: list[tuple[str, str]] | None = None  # a hover tool for this glyph, if given
    _drawn: list[tuple[object, ColumnDataSource]] = field(default_factory=list, init=False, repr=False)
    _scheduled: set = field(default_factory=set, init=False, repr=False)

    def __post_init__(self):
        self.state.param.watch(self._redraw, list(self.params))

    @property
    def figures(self) -> list:
        """The Bokeh figures this layer draws on."""
        return [figure for figure, _ in self._drawn]

    def source(self, figure) -> ColumnDataSource | None:
        """The data source of this layer's glyph on `figure` (None if not drawn there)."""
        return next((source for f, source in self._drawn if f is figure), None)

    def hook(self, plot, element) -> None:
        """HoloViews hook: make sure the figure has this layer, then draw the current marks
        (HoloViews has just reset the title if it re-rendered the view)."""
        figure = plot.state
        marks = self.fn(self.data, self.state)
        sources = [getattr(r, "data_source", None) for r in figure.renderers]
        if not any(f is figure and source in sources for f, source in self._drawn):
            source = ColumnDataSource(data=_columns(marks))
            method, options = self.glyph
            renderer = getattr(figure, method)(source=source, **options)
            # A tap or box selection on the view must not fade the marks.
            renderer.nonselection_glyph = renderer.glyph
            if self.tooltips:
                figure.add_tools(HoverTool(renderers=[renderer], tooltips=self.tooltips))
            self._drawn = [(f, s) for f, s in self._drawn if f is not figure] + [(figure, source)]
        self._draw(marks, [figure])

    def _redraw(self, *events) -> None:
        marks = None
        for figure, _ in self._drawn:
            document = figure.document
            if document is not None and document.session_context is not None:
                # A served figure may change only under its document's lock: on the server's
                # next tick, drawing the selection as it is then.
                if document not in self._scheduled:
                    self._scheduled.add(document)
                    document.add_next_tick_callback(lambda d=document: self._draw_served(d))
                continue
            if marks is None:
                marks = self.fn(self.data, self.state)
            self._draw(marks, [figure])

    def _draw_served(self, document) -> None:
        self._scheduled.discard(document)
        figures = [f for f in self.figures if f.document is document]
        if figures:
            self._draw(self.fn(self.data, self.state), figures)

    def _draw(self, marks: Marks, figures: list) -> None:
        for figure, source in self._drawn:
            if any(figure is f for f in figures):
                source.data = _columns(marks)
                if marks.title is not None:
                    figure.title.text = marks.title
                for axis_range, span in ((figure.x_range, marks.x_range), (figure.y_range, marks.y_range)):
                    if span is not None:
                        axis_range.start, axis_range.end = (float(v) for v in span)
                if marks.y_label is not None:
                    for axis in figure.yaxis:
                        axis.axis_label = marks.y_label
                if marks.y_ticks is not None:
                    ticks = [float(t) for t in marks.y_ticks]
                    for axis in figure.yaxis:
                        if isinstance(axis.ticker, FixedTicker):
                            axis.ticker.ticks = ticks
                        else:
                            axis.ticker = FixedTicker(ticks=ticks)


def _columns(marks: Marks) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in marks.columns.items()}
