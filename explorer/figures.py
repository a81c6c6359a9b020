"""The empty figure of a view: its axes, size and tools (`Frame`), made into a plain Bokeh
figure (`new_figure`) that the view's marks layers (`explorer.marks`) then draw on.

A view that changes with a click is a Bokeh figure and the data sources of its glyphs: a click
rewrites a few columns, and nothing re-processes the figure. Each view module says what its
figure looks like as a `Frame` and what it draws as `Marks`."""

from __future__ import annotations

from dataclasses import dataclass

from bokeh.models import FixedTicker, PrintfTickFormatter
from bokeh.plotting import figure as bokeh_figure

# Font sizes of every figure: small, like the paper's panels.
TITLE_SIZE, LABEL_SIZE, TICK_SIZE = "10pt", "9pt", "8pt"


@dataclass(frozen=True)
class Frame:
    """What a view's figure looks like before anything is drawn on it.

    Ranges are `(start, end)` (None: Bokeh fits the glyphs); ticks are positions, `(position,
    label)` pairs, or a number of ticks Bokeh should aim for; `tools` are Bokeh tool names
    ("tap", "box_select", "wheel_zoom", ...), `active` those active at first, `toolbar` where the
    toolbar goes (None: no toolbar). `axes` False: no axes at all (a map or a picture);
    `flip_y`: the y axis runs top to bottom (a matrix); `title`: the title when no marks layer
    writes one."""

    x_label: str | None = None
    y_label: str | None = None
    width: int = 300
    height: int = 280
    x_range: tuple[float, float] | None = None
    y_range: tuple[float, float] | None = None
    x_ticks: list | int | None = None
    y_ticks: list | int | None = None
    x_format: str | None = None
    axes: bool = True
    x_axis: bool = True
    y_axis: bool = True
    grid: bool = False
    flip_y: bool = False
    log_y: bool = False
    tools: tuple[str, ...] = ()
    active: tuple[str, ...] = ()
    toolbar: str | None = None
    title: str = ""


def new_figure(frame: Frame):
    """A Bokeh figure as `frame` describes it, with nothing drawn on it yet."""
    options = {}
    if frame.x_range is not None:
        options["x_range"] = tuple(float(v) for v in frame.x_range)
    if frame.y_range is not None:
        low, high = (float(v) for v in frame.y_range)
        options["y_range"] = (high, low) if frame.flip_y else (low, high)
    fig = bokeh_figure(width=frame.width, height=frame.height, title=frame.title,
                       tools=",".join(frame.tools), toolbar_location=frame.toolbar,
                       y_axis_type="log" if frame.log_y else "linear", **options)
    if frame.flip_y and frame.y_range is None:
        fig.y_range.flipped = True
    for tool in fig.tools:
        kind = type(tool).__name__
        if any(_TOOL_NAMES.get(name) == kind for name in frame.active):
            if kind in ("WheelZoomTool",):
                fig.toolbar.active_scroll = tool
            elif kind in ("TapTool",):
                fig.toolbar.active_tap = tool
            else:
                fig.toolbar.active_drag = tool
    fig.toolbar.logo = None
    fig.title.text_font_size = TITLE_SIZE
    fig.xaxis.visible = frame.axes and frame.x_axis
    fig.yaxis.visible = frame.axes and frame.y_axis
    fig.xgrid.visible = fig.ygrid.visible = frame.grid
    if not frame.axes:
        fig.outline_line_color = None
    for axis, label, ticks in ((fig.xaxis, frame.x_label, frame.x_ticks), (fig.yaxis, frame.y_label, frame.y_ticks)):
        axis.axis_label = label
        axis.axis_label_text_font_size = LABEL_SIZE
        axis.axis_label_text_font_style = "normal"
        axis.major_label_text_font_size = TICK_SIZE
        _set_ticks(axis, ticks)
    if frame.x_format is not None:
        fig.xaxis.formatter = PrintfTickFormatter(format=frame.x_format)
    return fig


_TOOL_NAMES = {"tap": "TapTool", "box_select": "BoxSelectTool", "wheel_zoom": "WheelZoomTool",
               "pan": "PanTool", "box_zoom": "BoxZoomTool"}


def _set_ticks(axis, ticks) -> None:
    if ticks is None:
        return
    if isinstance(ticks, int):
        axis.ticker.desired_num_ticks = ticks
        return
    positions = [float(t[0] if isinstance(t, tuple) else t) for t in ticks]
    axis.ticker = FixedTicker(ticks=positions)
    labels = {p: str(t[1]) for p, t in zip(positions, ticks) if isinstance(t, tuple)}
    if labels:
        axis.major_label_overrides = labels
