"""A: the image overview (every image placed by its features; the selected one marked)."""

from __future__ import annotations

import numpy as np

from explorer.data import RunData
from explorer.figures import Frame
from explorer.marks import Marks
from explorer.state import ExplorerState
from explorer.views.glyphs import MAP_SIZE, class_colours, rings


# The images of A: dots coloured by class, their opacity the probability of the true class.
POINTS = ("scatter", dict(x="x", y="y", marker="circle", size=7, fill_color="fill", fill_alpha="alpha",
                          line_color=None))
# What A's hover shows of an image.
HOVER = """
    <div style="display:flex;gap:6px;align-items:center">
      <img src="@thumb" width="56" height="56" style="image-rendering:pixelated;border:1px solid #ccc"/>
      <div><b>@label</b> &rarr; @prediction<br/>id @id<br/>p(true) @p_true{0.000}</div>
    </div>"""


def image_overview_frame(data: RunData) -> Frame:
    """A's figure: a map without axes; click an image to select it, scroll to zoom."""
    return Frame(width=MAP_SIZE[0], height=MAP_SIZE[1], axes=False, tools=("tap", "wheel_zoom", "pan", "reset"),
                 active=("wheel_zoom",), toolbar="above")


def image_points(data: RunData, state: ExplorerState | None = None) -> Marks:
    """A: every image at its `overview_xy` (`POINTS`, in image order, so a selection's indices
    are image indices), coloured by class, opacity 0.25 + 0.75 p(true class); the hover shows
    label, prediction, id and the thumbnail (up to 5000 images). Static per run."""
    p_true = data.true_class_probability()
    if p_true is None:  # no classifier: no prediction, every image equally opaque
        p_true = np.full(data.num_images, np.nan)
    # Index -1 (no label, no prediction) is the last entry: "(none)", grey.
    names = np.asarray([*data.class_names, "(none)"], dtype=object)
    with_thumbs = data.num_images <= 5000  # data URIs cost ~0.5 kB each in the page
    colours = np.asarray([*class_colours(len(data.class_names)), "#c8c8c8"], dtype=object)
    return Marks({
        "x": data.overview_xy[:, 0].astype(np.float64), "y": data.overview_xy[:, 1].astype(np.float64),
        "cls": names[data.image_class], "fill": colours[data.image_class], "label": names[data.labels],
        "prediction": names[data.prediction], "id": np.asarray(data.ids, dtype=object),
        "p_true": p_true, "alpha": np.where(np.isfinite(p_true), 0.25 + 0.75 * np.nan_to_num(p_true), 0.8),
        "thumb": np.asarray(data.thumbnail_uris() if with_thumbs else [""] * data.num_images, dtype=object),
    })


def image_marker(data: RunData, state: ExplorerState) -> Marks:
    """A: a ring around the selected image (`marks.RINGS`); the title names it."""
    i = state.image
    return rings(data.overview_xy[[i], 0], data.overview_xy[[i], 1], f"A · {data.image_name(i, short=True)}", big=18)
