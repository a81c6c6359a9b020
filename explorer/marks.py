"""Marks: what a view draws, as the columns of Bokeh glyphs, and the layers that keep them
drawn on the view's plain Bokeh figure (`explorer.figures`) as the selection changes.

A view function for marks returns a `Marks` (columns, title, and what else of the figure it
sets); `RINGS`, `DOTS`, `QUADS`, `SEGMENTS`, `BANDS`, `IMAGE` and `RGBA` are the glyphs the
explorer draws them with. A `MarksLayer` is one glyph renderer and its data source on one
figure: a param watcher on the session's `ExplorerState` rewrites its columns and the figure's
title when the selection changes (for a served page, on the server's next tick, when the
document may be changed). A head click therefore costs a few column writes per view, not a
re-render; a layer whose `params` are empty is drawn once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from bokeh.models import (ColorBar, ColumnDataSource, EqHistColorMapper, FixedTicker, HoverTool,
                          LinearColorMapper, PrintfTickFormatter)
from bokeh.palettes import Greys256

# (Bokeh glyph method, its arguments). Columns: x, y, ring (line colour), size.
RINGS = ("scatter", dict(x="x", y="y", marker="circle", size="size", fill_alpha=0,
                         line_color="ring", line_width=3))
# Filled dots; columns x, y, size, fill.
DOTS = ("scatter", dict(x="x", y="y", marker="circle", size="size", fill_color="fill", line_color="fill"))
# Boxes, filled and/or outlined; columns x0, y0, x1, y1, fill, alpha (of the fill), ring (line
# colour), width (line width; 0: no outline).
QUADS = ("quad", dict(left="x0", right="x1", bottom="y0", top="y1", fill_color="fill",
                      fill_alpha="alpha", line_color="ring", line_width="width"))
# Line segments; columns x0, y0, x1, y1, colour, alpha, width.
SEGMENTS = ("segment", dict(x0="x0", y0="y0", x1="x1", y1="y1", line_color="colour",
                            line_alpha="alpha", line_width="width"))
# Images; columns image (2-D arrays, row 0 at the bottom, as Bokeh draws them), x, y (lower left
# corner in data coordinates), dw, dh (size). `IMAGE` maps values through the layer's colour
# mapper; `RGBA` takes uint32 arrays of packed RGBA pixels.
IMAGE = ("image", dict(image="image", x="x", y="y", dw="dw", dh="dh"))
RGBA = ("image_rgba", dict(image="image", x="x", y="y", dw="dw", dh="dh"))
# A band between two curves; columns x, low, high (the colour and alpha are the glyph's).
BANDS = ("varea", dict(x="x", y1="low", y2="high", fill_color="lightgrey", fill_alpha=0.6))


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
    palette: tuple[str, ...] | None = None      # an image's colours, low to high
    colour_range: tuple[float, float] | None = None
    colour_title: str | None = None             # the image's colour bar title

    def __post_init__(self):
        lengths = {k: len(v) for k, v in self.columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"marks columns of different lengths: {lengths}")


@dataclass
class _Drawn:
    """A marks layer on one figure: its data source and colour mapper (images only)."""

    figure: object
    source: ColumnDataSource
    renderer: object
    mapper: object | None = None


@dataclass
class MarksLayer:
    """A marks layer of one session: `fn(data, state) -> Marks` drawn with `glyph` (`RINGS`,
    `DOTS`, `QUADS`, `SEGMENTS`, `BANDS`, `IMAGE`, `RGBA` or a glyph of the same form) on every
    figure it is drawn on (`draw_on`), redrawn when any of `params` of the state changes.

    `tooltips`: a hover tool for this glyph. `colours` ("linear" or "eq_hist"): an `IMAGE`
    layer's colour mapper (palette and range from each `Marks`), with a colour bar if
    `colour_bar`, and `nan_colour` for missing values. `legend`: the column whose values name
    the glyphs in a legend right of the figure."""

    fn: Callable
    data: object = field(repr=False)
    state: object = field(repr=False)
    params: list[str]
    glyph: tuple[str, dict] = RINGS
    tooltips: list[tuple[str, str]] | str | None = None
    colours: str | None = None
    colour_bar: bool = False
    nan_colour: str = "rgba(0, 0, 0, 0)"
    legend: str | None = None
    _drawn: list[_Drawn] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self):
        if self.colours not in (None, "linear", "eq_hist"):
            raise ValueError(f"colours must be None, 'linear' or 'eq_hist', not {self.colours!r}")
        if self.params:
            self.state.param.watch(self.redraw, list(self.params))

    @property
    def figures(self) -> list:
        """The Bokeh figures this layer draws on."""
        return [d.figure for d in self._drawn]

    def source(self, figure) -> ColumnDataSource | None:
        """The data source of this layer's glyph on `figure` (None if not drawn there)."""
        return next((d.source for d in self._drawn if d.figure is figure), None)

    def colour_mapper(self, figure):
        """The colour mapper of this (image) layer on `figure` (None if it has none)."""
        return next((d.mapper for d in self._drawn if d.figure is figure), None)

    def draw_on(self, figure):
        """Add this layer's glyph to `figure`, drawn with the current marks; returns its
        renderer (the target of the figure's tap and box-select tools, for a layer whose items
        are picked)."""
        marks = self.fn(self.data, self.state)
        drawn = self._add(figure, marks)
        self._drawn.append(drawn)
        self._draw(marks, [figure])
        return drawn.renderer

    def _add(self, figure, marks: Marks) -> _Drawn:
        source = ColumnDataSource(data=_columns(marks))
        method, options = self.glyph
        mapper = None
        if self.colours is not None:
            kind = EqHistColorMapper if self.colours == "eq_hist" else LinearColorMapper
            mapper = kind(palette=list(marks.palette or Greys256), nan_color=self.nan_colour)
            options = {**options, "color_mapper": mapper}
            if self.colour_bar:
                # Attention weights are small: "0.0012", not Bokeh's default "1.2e-3".
                figure.add_layout(ColorBar(color_mapper=mapper, width=10, title_text_font_size="8pt",
                                           major_label_text_font_size="8pt",
                                           formatter=PrintfTickFormatter(format="%.2g")), "right")
        if self.legend is not None:
            options = {**options, "legend_field": self.legend}
        renderer = getattr(figure, method)(source=source, **options)
        # A tap or box selection on the view must not fade the marks.
        renderer.nonselection_glyph = renderer.glyph
        renderer.selection_glyph = renderer.glyph
        if self.legend is not None:
            legend = figure.legend[0]
            figure.center.remove(legend)
            legend.label_text_font_size = "8pt"
            legend.spacing, legend.padding, legend.glyph_height = 0, 4, 14
            figure.add_layout(legend, "right")
        if self.tooltips:
            figure.add_tools(HoverTool(renderers=[renderer], tooltips=self.tooltips))
        return _Drawn(figure, source, renderer, mapper)

    def redraw(self, *events) -> None:
        """Draw the marks of the state as it is now (or, for a served figure, on the server's
        next tick)."""
        marks = None
        for drawn in self._drawn:
            document = drawn.figure.document
            if document is not None and document.session_context is not None:
                # A served figure may change only under its document's lock: on the server's
                # next tick, drawing the selection as it is then, with every other layer due.
                _due(document, self)
                continue
            if marks is None:
                marks = self.fn(self.data, self.state)
            self._draw(marks, [drawn.figure])

    def draw_served(self, document) -> None:
        """Draw the marks of the state as it is now on this layer's figures in `document`
        (a served document, under its lock)."""
        figures = [f for f in self.figures if f.document is document]
        if figures:
            self._draw(self.fn(self.data, self.state), figures)

    def _draw(self, marks: Marks, figures: list) -> None:
        for drawn in self._drawn:
            figure = drawn.figure
            if not any(figure is f for f in figures):
                continue
            drawn.source.data = _columns(marks)
            if marks.title is not None:
                figure.title.text = marks.title
            for axis_range, span in ((figure.x_range, marks.x_range), (figure.y_range, marks.y_range)):
                if span is not None:
                    low, high = (float(v) for v in span)
                    if getattr(axis_range, "flipped", False):
                        low, high = high, low
                    axis_range.start, axis_range.end = low, high
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
            if drawn.mapper is not None:
                if marks.palette is not None and list(marks.palette) != list(drawn.mapper.palette):
                    drawn.mapper.palette = list(marks.palette)
                if marks.colour_range is not None and not isinstance(drawn.mapper, EqHistColorMapper):
                    # (An equalising mapper takes its range from the data: setting its low and
                    # high would make the browser equalise the image twice more.)
                    drawn.mapper.low, drawn.mapper.high = (float(v) for v in marks.colour_range)
                if marks.colour_title is not None:
                    for bar in figure.right:
                        if isinstance(bar, ColorBar) and bar.color_mapper is drawn.mapper:
                            bar.title = marks.colour_title


# The layers due to be drawn on each served document at its next tick, in the order they fell
# due (a layer once).
_DUE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _due(document, layer: MarksLayer) -> None:
    """Schedule `layer` to be drawn on `document` at the server's next tick. Every layer due by
    then is drawn in that one callback (one lock, one tick, a layer once however many of its
    parameters changed)."""
    layers = _DUE.get(document)
    if layers is None:
        layers = _DUE[document] = []
        document.add_next_tick_callback(lambda: _draw_due(document))
    if not any(layer is other for other in layers):
        layers.append(layer)


def _draw_due(document) -> None:
    import panel as pn
    from panel.io.state import set_curdoc

    # Panel's `unlocked` sends every change made inside it as one PATCH-DOC message (Bokeh would
    # send a message per change, and the browser lays the page out after each). It does not run
    # the Python `on_change` callbacks of those changes: what follows a changed model must
    # follow it in the browser too (the HTML titles do: explorer.titles).
    with set_curdoc(document), pn.io.unlocked():
        for layer in _DUE.pop(document, []):
            layer.draw_served(document)


def _columns(marks: Marks) -> dict[str, np.ndarray | list]:
    """The data source's columns: arrays, except a column of images, which Bokeh wants as a
    list of 2-D arrays."""
    return {k: list(v) if isinstance(v, list) and v and isinstance(v[0], np.ndarray) else np.asarray(v)
            for k, v in marks.columns.items()}
