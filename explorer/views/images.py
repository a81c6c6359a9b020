"""A: the image overview (every image placed by its features; the selected one marked)."""

from __future__ import annotations

import holoviews as hv
import numpy as np
from bokeh.models import HoverTool

from explorer.data import RunData
from explorer.marks import Marks
from explorer.state import ExplorerState
from explorer.views.glyphs import (bokeh_element, class_colours, rings)


@bokeh_element
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
    return rings(data.overview_xy[[i], 0], data.overview_xy[[i], 1], f"A · {data.image_name(i, short=True)}", big=18)
