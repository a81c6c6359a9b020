"""What every view of the explorer shares: colours, and builders of the marks that views
return (`explorer.marks.Marks`: quads, rings, segments, polylines, images)."""

from __future__ import annotations

import functools

import holoviews as hv
import numpy as np

from explorer.marks import Marks
from explorer.state import ExplorerState

HIGHLIGHT = "#d62728"     # selected heads, the selected image, the selected mode
SECONDARY = "#ff9896"     # selected heads other than the primary one
BAR = "#8fa8d0"           # the paper's light-blue bars
CLS_COLOUR = "#2b5fa8"    # CLS attention and CLS links (paper: blue)
PATCH_COLOUR = "#d9711c"  # patch attention and patch links (paper: orange)
MAX_LINKS = 4000          # links drawn in D3 (the strongest); Bokeh stays fluid below ~10k
SOURCE_TARGETS = 5        # D3 draws the source token's strongest targets even below the threshold
MAP_SIZE = (430, 320)     # A's and D1's maps in pixels: the four overviews fit one 1920 x 1080 screen
MAX_EXTRA_HEADS = 8       # heads besides the primary drawn in C2, C3 and B2



@functools.cache
def use_bokeh() -> None:
    """Load HoloViews' Bokeh backend, once per process: the HoloViews views (the pruning curve,
    the D1 prototypes) are Bokeh plots and set Bokeh options. Called when the first of them is
    built (`bokeh_element`), not at import."""
    hv.extension("bokeh", logo=False)


def bokeh_element(fn):
    """A view that returns a HoloViews element: the Bokeh backend is loaded before it runs."""
    @functools.wraps(fn)
    def view(*args, **kwargs):
        use_bokeh()
        return fn(*args, **kwargs)
    return view


def set_defaults() -> None:
    """Small titles and labels for the HoloViews plots of the explorer, as `explorer.figures`
    gives its Bokeh figures (called by `explorer.app`)."""
    from explorer.figures import LABEL_SIZE, TICK_SIZE, TITLE_SIZE

    use_bokeh()
    small = {"fontsize": {"title": TITLE_SIZE, "labels": LABEL_SIZE, "xticks": TICK_SIZE, "yticks": TICK_SIZE}}
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


def extra_heads(state: ExplorerState, limit: int | None = MAX_EXTRA_HEADS) -> list[int]:
    """The selected heads other than the primary one (at most `limit`)."""
    return [h for h in state.heads if h != state.head][:limit]


# Marks and frames (explorer.marks) ---------------------------------------------------------

def quads(x0, y0, x1, y1, title: str | None = None, *, fill="#ffffff", alpha=0.0, ring=HIGHLIGHT,
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


def rings(x, y, title: str | None, big: int = 16) -> Marks:
    """Rings (`marks.RINGS`) on selected items, given primary first: red and larger for the
    primary one."""
    primary = np.arange(len(x)) == 0
    return Marks({"x": np.asarray(x, np.float64), "y": np.asarray(y, np.float64),
                  "ring": np.where(primary, HIGHLIGHT, SECONDARY).astype(object),
                  "size": np.where(primary, big, big - 3)}, title)


def segments(x0, y0, x1, y1, colour, alpha=1.0, width=2.0, **extra) -> dict[str, np.ndarray]:
    """Columns of `marks.SEGMENTS`; the styles are one value for all or one per segment."""
    x0 = np.asarray(x0, np.float64)
    n = len(x0)
    column = lambda v, dtype=None: np.asarray(v if np.ndim(v) else [v] * n, dtype)  # noqa: E731
    return {"x0": x0, "y0": column(y0, np.float64), "x1": column(x1, np.float64), "y1": column(y1, np.float64),
            "colour": column(colour, object), "alpha": column(alpha, np.float64),
            "width": column(width, np.float64), **{k: np.asarray(v) for k, v in extra.items()}}


def polylines(lines: list[tuple[np.ndarray, np.ndarray]], colour: str, width: float = 2.0) -> dict[str, np.ndarray]:
    """Polylines `[(x, y), ...]` as the columns of `marks.SEGMENTS` (one segment per step)."""
    x0 = [x[:-1] for x, _ in lines] or [np.zeros(0)]
    y0 = [y[:-1] for _, y in lines] or [np.zeros(0)]
    x1 = [x[1:] for x, _ in lines] or [np.zeros(0)]
    y1 = [y[1:] for _, y in lines] or [np.zeros(0)]
    return segments(np.concatenate(x0), np.concatenate(y0), np.concatenate(x1), np.concatenate(y1),
                    colour, 1.0, width)


def image_glyph(values: np.ndarray, x0: float, y0: float, width: float, height: float, cmap: str,
                title: str | None = None, colour_title: str | None = None) -> Marks:
    """An image (`marks.IMAGE`) of `values` whose row 0 is the top row, over the box with lower
    left corner `(x0, y0)`; colours from the HoloViews colour map `cmap` over the values' range."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-12:
        low, high = low - 1e-6, high + 1e-6
    return Marks({"image": [values[::-1]], "x": [float(x0)], "y": [float(y0)], "dw": [float(width)],
                  "dh": [float(height)]}, title, palette=palette(cmap), colour_range=(low, high),
                 colour_title=colour_title)


@functools.lru_cache(maxsize=16)
def palette(cmap: str) -> tuple[str, ...]:
    """256 colours of a HoloViews colour map (the same the HoloViews views used)."""
    from holoviews.plotting.util import process_cmap

    return tuple(process_cmap(cmap, 256))
