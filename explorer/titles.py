"""Figure titles drawn as HTML above their figures, where they wrap.

Bokeh draws a figure's title on its canvas, on one line, and cuts it off at the figure's edge, so
whether a title fits depends on the reader's fonts: DejaVu Sans, the one sans-serif font of a
fresh Debian machine, is about 15% wider than Helvetica or Liberation Sans, and four titles that
fitted on one machine were cut on another. An HTML element wraps its text in whatever font the
browser has.

So each view keeps its title where the marks layers (`explorer.marks`) or HoloViews write it,
in its figure's Bokeh `Title` model (which the tests read), but the canvas does not draw it: a
`FigureTitle` shows the same text in an HTML element above the figure, as wide as the figure,
and follows every change of it. A view's title is therefore always the model's `title.text`;
this module only decides where it is drawn.
"""

from __future__ import annotations

import html

import panel as pn
from bokeh.models import CustomJS, Div

# The class of the element that holds a title's text (the browser test finds titles by it).
TITLE_CLASS = "figure-title"
STYLE = ("font-weight:bold;font-size:10pt;line-height:1.3;color:#333;"
         "overflow-wrap:anywhere;white-space:normal")


# `FigureTitle._show` in the browser: the title's text, escaped as `html.escape` does.
_SHOW_JS = f"""
const text = cb_obj.text || "";
const escaped = text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
                    .replace(/"/g, "&quot;").replace(/'/g, "&#x27;");
const html = text ? `<div class="{TITLE_CLASS}" style="{STYLE}">${{escaped}}</div>` : "";
if (div.text !== html) div.text = html;
"""


class FigureTitle:
    """The HTML title of one view of one session: `pane` goes above the view's figure, which
    `follow` (a Bokeh figure) or `hook` (in a HoloViews view's hooks) hands to it, so that the
    figure hides its canvas title and has its text shown in `pane`.

    The text is a Bokeh `Div` of the same document as the figure, changed right where the
    figure's title changes: under the same document lock, so both reach the browser in one
    update (a Panel pane's change made there is deferred to a later tick, and the titles lagged
    their figures by seconds while a live computation held the server)."""

    def __init__(self):
        self.div = Div(text="", margin=(2, 5, 0, 5))
        self.pane = pn.pane.Bokeh(self.div, margin=0)
        self._watched: set[str] = set()  # ids of the Title models followed
        self._text = ""

    @property
    def text(self) -> str:
        """The title as shown (the figure's title text)."""
        return self._text

    def hook(self, plot, element) -> None:
        """HoloViews hook (for the views that are HoloViews elements): `follow` the figure
        HoloViews has drawn."""
        self.follow(plot.state)

    def follow(self, figure) -> None:
        """Show `figure`'s title here, not on its canvas, now and whenever it changes (HoloViews
        may replace the `Title` model when it re-renders, so each new one is followed)."""
        title = figure.title
        if title is None:
            return
        title.visible = False
        if title.id not in self._watched:
            self._watched.add(title.id)
            title.on_change("text", lambda attr, old, new: self._show(new))
            # And in the browser: a served page's marks change the title inside Panel's
            # `unlocked` (one message for all views, explorer.marks), which sends the change
            # but never runs the Python callback above.
            title.js_on_change("text", CustomJS(args={"div": self.div}, code=_SHOW_JS))
        if figure.width:
            self.div.width = int(figure.width)
        self._show(title.text)

    def _show(self, text: str | None) -> None:
        self._text = text or ""
        self.div.text = (f'<div class="{TITLE_CLASS}" style="{STYLE}">{html.escape(self._text)}</div>'
                         if self._text else "")
