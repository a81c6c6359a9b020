"""The page of a run: the four areas laid out like the paper's system overview, their
how-to-read notes, and the sidebar controls bound to the session's state."""

from __future__ import annotations

import panel as pn

from explorer.data import METRICS, MODE_LABELS, NO_CLASSIFIER, RunData
from explorer.state import LINKS, ExplorerState
from explorer.views.patterns import PROTOTYPES_WIDTH
from explorer.wiring import ExplorerViews
from vit_jax_va.masks import PRUNE_MODES

NOTES = {
    "A": "Every analysed image, placed by its features (t-SNE); colour is the class, opacity the "
         "probability of the true class (grey and opaque without a classifier or labels). Hover for "
         "the thumbnail; click an image (or type its id in the sidebar) to select it for B and D.",
    "B": "**B1**: the metric when one head is pruned (its attention zeroed), for every head: a "
         "dip marks a head the prediction needs (without a classifier: a peak marks a head the "
         "features need). Click a dot or a heat-map cell to select a head. "
         "**B2**: the same for the six partial-pruning modes (grey blocks of the glyph are "
         "zeroed: top row / left column = CLS, the rest = patches); click a bar to choose the "
         "mode of **B3**, the top-5 after that pruning. The curve prunes heads cumulatively "
         "(ranked on half of the images, measured on the other half): a good ranking loses "
         "accuracy fast when the most important go first.",
    "C": "**C1**: entropy of each head's n-hop strength profile (0 = all attention on one ring, "
         "ln(rings) = flat); early layers spread out, late layers are global. Click a dot or "
         "box-select several. **C2**: strength at each hop d for the selected head. **C3**: how "
         "the head's entropy varies over all images, the selected image in red. Right: the "
         "mean attention distance per layer (local to global).",
    "D": "**D1**: every (image, head) pattern on a 2-D map (grey density) and one dot per head "
         "(colour = layer); click or box-select heads, toggle patch / CLS patterns in the "
         "sidebar, click a prototype to select the heads of its cluster. **D2**: the image with "
         "the selected source token's attention; click a patch to make it the source. **D3**: "
         "links from source tokens (top) to the targets they attend to (bottom), CLS links blue, "
         "patch links orange: the source token's links above the threshold and its strongest "
         "targets, or (sidebar) every link above the threshold. **D4**: the full attention matrix (click a "
         "row to choose the source). **D5**: the values' histogram; click to set the threshold.",
}


# Pixels around a figure (Panel's margins) and inside an area's card.
VIEW_MARGIN, CARD_PADDING = 20, 20


def _note(key: str) -> pn.pane.Markdown:
    return pn.pane.Markdown(f"*How to read this:* {NOTES[key]}", styles={"font-size": "12px", "color": "#555"},
                            sizing_mode="stretch_width", margin=(0, 10))


def _area(letter: str, title: str, width: int, *rows) -> pn.Card:
    """An area's card, `width` pixels wide (its figures side by side), its note below them."""
    return pn.Card(*rows, _note(letter), title=f"{letter} · {title}", collapsible=False, width=width,
                   css_classes=[f"area-{letter.lower()}"], name=f"area-{letter}")


def _flow(*items, **params) -> pn.FlexBox:
    """Items side by side, wrapping onto the next line where the screen is narrower than they
    are: the page never scrolls sideways from 1280 px up."""
    return pn.FlexBox(*items, flex_wrap="wrap", align_items="flex-start", sizing_mode="stretch_width",
                      **params)


def main_area(v: ExplorerViews) -> pn.Column:
    """The page: the four areas' overviews first, laid out like paper-system-overview.png
    (A beside B, C beside D; at 1920 x 1080 all four are on the first screen), then the detail
    views of the selected head and image (B2, B3, the curve, C2, C3, the distance per layer,
    D2-D5) side by side, one scroll below.

    Why a detail row and not tabs or a modal: a click selects a head or an image for every
    detail view at once, and the paper's point is to read them together (a head's pruning
    modes beside its hop profile beside its attention); a row shows them all on one screen,
    where tabs would show one area's at a time and a modal would hide the overviews one clicks in."""
    details = pn.Card(detail_views(v),
                      title="Details of the selected head and image (B2, B3, curve · C2, C3, distance · D2-D5)",
                      collapsible=False, css_classes=["area-details"], name="details")
    return pn.Column(overviews(v), details, sizing_mode="stretch_width")


def view(v: ExplorerViews, name: str) -> pn.Column:
    """A view: its title above its figure."""
    figure = (pn.pane.Bokeh(v.figures[name]) if name in v.figures
              else pn.pane.HoloViews(v.plots[name], linked_axes=False))
    return pn.Column(v.titles[name].pane, figure)


def overviews(v: ExplorerViews) -> pn.FlexBox:
    """The four areas' overviews (A; B1 and its heat map; C1; D1 and its prototypes), each in
    its card with its note, wrapping onto more rows on a narrower screen."""
    def width(*names: str) -> int:
        """The width of an area holding these views side by side, with their margins."""
        return sum(v.figures[n].width if n in v.figures else PROTOTYPES_WIDTH for n in names) \
            + VIEW_MARGIN * len(names) + CARD_PADDING

    return _flow(
        _area("A", "Image overview", width("A"), view(v, "A")),
        _area("B", "Head importance", width("B1", "B1 heat map"), pn.Row(view(v, "B1"), view(v, "B1 heat map"))),
        _area("C", "Attention strength", width("C1"), view(v, "C1")),
        _area("D", "Attention patterns", width("D1", "D1 prototypes"),
              pn.Row(view(v, "D1"), view(v, "D1 prototypes"))),
        name="overviews")


def detail_views(v: ExplorerViews, names=("B2", "B3", "curve", "C2", "C3", "distance", "D2", "D4", "D5",
                                           "D3")) -> pn.FlexBox:
    """The detail views of the selected head and image, side by side (B3 is the top-5 table)."""
    return _flow(*(v.b3 if name == "B3" else view(v, name) for name in names))


def controls(data: RunData, state: ExplorerState) -> pn.Column:
    """Sidebar widgets bound to the state: image, head, metric, scope, mode, threshold, space."""
    s = state
    image_id = pn.widgets.TextInput(label="image id", placeholder="e.g. " + data.ids[0])
    image_index = pn.widgets.IntInput.from_param(s.param.image, label="image index")
    found = pn.pane.Markdown("", margin=(0, 10), styles={"font-size": "12px"})

    def search(event):
        index = data.find_image(event.new)
        if index is None:
            found.object = f"no image with id `{event.new}`"
        else:
            found.object = ""
            s.select_image(index)
    image_id.param.watch(search, "value")
    thumb = pn.pane.HTML(pn.bind(lambda i: f'<img src="{data.thumbnail_png(i)}" width="96" height="96" '
                                           f'style="image-rendering:pixelated;border:1px solid #ccc"/>'
                                           f'<div style="font-size:12px">{data.image_name(i)}</div>',
                                 s.param.image), height=130)

    head_names = {data.head_name(h): h for h in range(data.num_heads_total)}
    head_select = pn.widgets.Select(label="head", options=head_names, value=s.head)
    head_select.param.watch(lambda e: s.select_head(e.new) if e.new != s.head else None, "value")
    s.param.watch(lambda e: setattr(head_select, "value", e.new), "head")
    selected = pn.pane.Markdown(pn.bind(lambda heads: f"{len(heads)} head(s) selected: " + ", ".join(
        f"L{h // data.num_heads}H{h % data.num_heads}" for h in heads[:24]) + (" ..." if len(heads) > 24 else ""),
        s.param.heads), styles={"font-size": "12px"}, margin=(0, 10))

    metric = pn.widgets.Select.from_param(s.param.metric, label="metric (B1, B2)")
    absent = "" if data.has_classifier else f"\n\n{NO_CLASSIFIER}"
    metric_help = pn.pane.Markdown(pn.bind(lambda m: f"*{METRICS[m]}*{absent}", s.param.metric),
                                   styles={"font-size": "12px"}, margin=(0, 10), name="metric help")
    scope = pn.widgets.RadioButtonGroup.from_param(s.param.scope, label="scope", options=data.scopes)
    classes = {"(the image's class)": -1, **{n: i for i, n in enumerate(data.class_names)}}
    scope_class = pn.widgets.Select(label="class of the class scope", options=classes, value=s.scope_class)
    scope_class.link(s, value="scope_class")
    mode = pn.widgets.Select(label="prune mode (B3)", options={MODE_LABELS[m]: m for m in PRUNE_MODES},
                             value=s.mode)
    mode.link(s, value="mode")
    s.param.watch(lambda e: setattr(mode, "value", e.new), "mode")
    threshold = pn.widgets.FloatSlider.from_param(s.param.threshold, label="link threshold (D2, D3, D5)",
                                                  step=0.005)
    space = pn.widgets.RadioButtonGroup.from_param(s.param.space, label="pattern space (D1)")
    token = pn.widgets.IntInput.from_param(s.param.source_token, label=f"source token (0 = {data.token_name(0)})")
    links = pn.widgets.RadioButtonGroup.from_param(s.param.links, label="links (D3)",
                                                   options={label: key for key, label in LINKS.items()})
    for widget in (image_id, image_index, head_select, metric, scope, scope_class, mode, threshold, space,
                   token, links):
        widget.sizing_mode = "stretch_width"  # not Panel's default 300 px, wider than the sidebar
    return pn.Column(
        "### Image", image_id, found, image_index, thumb,
        "### Head", head_select, selected,
        "### Importance", metric, metric_help, "scope", scope, scope_class, mode,
        "### Patterns", space, token, threshold, "links (D3)", links, sizing_mode="stretch_width")


def run_summary(data: RunData) -> str:
    """One line on the run: its images, the model's shape and where the model came from."""
    return (f"**Run** `{data.name}`: {data.num_images} images, {data.depth} layers x "
            f"{data.num_heads} heads, {data.grid[0]}x{data.grid[1]} patches + "
            f"{data.num_prefix} prefix token(s); model `{data.run.manifest['model'].get('source', '?')}`.")


def pattern_errors(data: RunData) -> str:
    """The autoencoders' held-out reconstruction error against PCA (METHOD.md section 3)."""
    parts = [f"{space} {p['errors'][0]:.2g} vs PCA {p['errors'][1]:.2g}"
             for space, p in data.patterns.items() if len(p.get("errors", ())) == 2]
    return (" Pattern autoencoder held-out MSE: " + "; ".join(parts) + ".") if parts else ""
