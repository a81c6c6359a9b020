"""The explorer app: one page with the four areas (A images, B importance, C strength,
D patterns), a sidebar with the selection controls, and the links between the views.

`build_app()` is called once per browser session (by `panel serve explorer` or `vit-va
explore`): it creates that session's `ExplorerState`, its streams and its views, so sessions
never share a selection. The run's arrays are opened once per process (`explorer.data.load_run`)
and shared read-only.

Where the runs are: `--runs DIR` / `--run NAME` after `panel serve explorer --args`, or the
environment variables `VIT_VA_RUNS` and `VIT_VA_RUN` (and `--demo-images 200` to make a missing
demo run smaller); by default `runs/` in the working directory and its `demo` run. The run picker lists the runs directly under the runs directory
and nothing else, so a browser cannot make the server open an arbitrary path. When the demo run
does not exist yet it is computed first (the same sweep as `vit-va sweep`), with its progress
shown in the page; a demo run of an earlier demo model (or results-store schema) is moved aside
to `demo-<its weights hash>` first (`vit_jax_va.demo.retire_stale_demo_run`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import holoviews as hv
import numpy as np
import panel as pn
from holoviews import streams

from explorer import views
from explorer.data import METRICS, MODE_LABELS, SCOPES, RunData, load_run
from explorer.marks import DOTS, IMAGE, QUADS, RGBA, RINGS, SEGMENTS, MarksLayer
from explorer.state import ExplorerState
from explorer.titles import FigureTitle
from vit_jax_va import store
from vit_jax_va.masks import PRUNE_MODES
from vit_jax_va.sweep import SweepOptions

RUNS_ENV, RUN_ENV = "VIT_VA_RUNS", "VIT_VA_RUN"
DEMO_RUN = "demo"
_RETIRE_LOCK = threading.Lock()

NOTES = {
    "A": "Every analysed image, placed by its features (t-SNE); colour is the class, opacity the "
         "probability the model gives the true class. Hover for the thumbnail; click an image "
         "(or type its id in the sidebar) to select it. B and D follow the selected image.",
    "B": "**B1**: the metric when one head is pruned (its attention zeroed), for every head: a "
         "dip marks a head the prediction needs. Click a dot or a heat-map cell to select a head. "
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
         "patch links orange, above the threshold. **D4**: the full attention matrix (click a "
         "row to choose the source). **D5**: the values' histogram; click to set the threshold.",
}


def settings(argv: list[str] | None = None) -> tuple[Path, str, int | None]:
    """(runs directory, run name, images of a missing demo run (None: all)) from
    `--runs/--run/--demo-images` arguments, the environment, or defaults."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs", default=os.environ.get(RUNS_ENV, "runs"))
    parser.add_argument("--run", default=os.environ.get(RUN_ENV, DEMO_RUN))
    parser.add_argument("--demo-images", type=int, default=None,
                        help="sweep only the first N demo images for a missing demo run")
    args, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return Path(args.runs).absolute(), args.run, args.demo_images


def run_names(runs_dir: Path) -> list[str]:
    """Names of the runs directly under `runs_dir`."""
    return [p.name for p in store.list_runs(runs_dir)]


# The demo sweep, run once per process in the background --------------------------------------

class SweepJob:
    """The demo sweep in a background thread; sessions poll it to show its progress.

    `images` and `options` shrink the sweep (None and the defaults: `vit-va sweep`'s)."""

    def __init__(self, out: Path, images: int | None = None, options: SweepOptions = SweepOptions()):
        self.out, self.images, self.options = out, images, options
        self.stage, self.done, self.total = "starting", 0, 1
        self.stages_seen: list[str] = []
        self.lines: list[str] = []
        self.error: str | None = None
        self.finished = False
        self._thread = threading.Thread(target=self._run, name="vit-va-demo-sweep", daemon=True)

    def start(self) -> "SweepJob":
        self._thread.start()
        return self

    def log(self, text: str) -> None:
        self.lines.extend(str(text).splitlines())
        del self.lines[:-20]

    def _run(self) -> None:
        try:
            from explorer.sweeping import run_demo_sweep

            run_demo_sweep(self.out, images=self.images, options=self.options, log=self.log,
                           progress=self._progress)
        except Exception as err:  # shown in the page: the user needs to know why
            self.error = f"{type(err).__name__}: {err}"
            self.log(traceback.format_exc())
        finally:
            self.finished = True

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, max(total, 1)
        if not self.stages_seen or self.stages_seen[-1] != stage:
            self.stages_seen.append(stage)


_JOBS: dict[str, SweepJob] = {}
_JOBS_LOCK = threading.Lock()


def demo_sweep(out: Path, images: int | None = None, options: SweepOptions = SweepOptions()) -> SweepJob:
    """The (one per process and output directory) background sweep that makes the demo run.
    Sessions share a running sweep; a finished one is not reused (the run it made has gone or
    is incomplete if a session asks again, e.g. after an upgrade moved it aside)."""
    with _JOBS_LOCK:
        job = _JOBS.get(str(out))
        if job is None or job.finished:
            job = _JOBS[str(out)] = SweepJob(out, images, options).start()
        return job


# Linking helpers ------------------------------------------------------------------------------

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


# Layout -------------------------------------------------------------------------------------

def _note(key: str) -> pn.pane.Markdown:
    return pn.pane.Markdown(f"*How to read this:* {NOTES[key]}", styles={"font-size": "12px", "color": "#555"},
                            sizing_mode="stretch_width", margin=(0, 10))


def _area(letter: str, title: str, *rows, **size) -> pn.Card:
    size = size or {"sizing_mode": "stretch_width"}
    if "min_width" in size:
        size["sizing_mode"] = "stretch_width"
    return pn.Card(*rows, _note(letter), title=f"{letter} · {title}", collapsible=False,
                   css_classes=[f"area-{letter.lower()}"], name=f"area-{letter}", **size)


def main_area(v: ExplorerViews) -> pn.Column:
    """The four areas, laid out like paper-system-overview.png: A beside B, then C, then D."""
    plots = v.plots
    view = lambda name: pn.Column(v.titles[name].pane,  # noqa: E731  (a view: its title above its figure)
                                  pn.pane.HoloViews(plots[name], linked_axes=False))
    a = _area("A", "Image overview", view("A"), width=490)
    b = _area("B", "Head importance",
              pn.Row(view("B1"), view("B1 heat map")),
              pn.Row(view("B2"), v.b3, view("curve")), min_width=980)
    c = _area("C", "Attention strength", pn.Row(view("C1"), view("C2"), view("C3"), view("distance")))
    d = _area("D", "Attention patterns",
              pn.Row(pn.Column(view("D1"), view("D1 prototypes")),
                     pn.Column(pn.Row(view("D2"), view("D4"), view("D5")), view("D3"))))
    return pn.Column(pn.Row(a, b, sizing_mode="stretch_width"), c, d, sizing_mode="stretch_width")


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
    metric_help = pn.pane.Markdown(pn.bind(lambda m: f"*{METRICS[m]}*", s.param.metric),
                                   styles={"font-size": "12px"}, margin=(0, 10))
    scope = pn.widgets.RadioButtonGroup.from_param(s.param.scope, label="scope", options=list(SCOPES))
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
    token = pn.widgets.IntInput.from_param(s.param.source_token, label="source token (0 = CLS)")
    return pn.Column(
        "### Image", image_id, found, image_index, thumb,
        "### Head", head_select, selected,
        "### Importance", metric, metric_help, "scope", scope, scope_class, mode,
        "### Patterns", space, token, threshold, sizing_mode="stretch_width")


def pattern_errors(data: RunData) -> str:
    """The autoencoders' held-out reconstruction error against PCA (METHOD.md section 3)."""
    parts = [f"{space} {p['errors'][0]:.2g} vs PCA {p['errors'][1]:.2g}"
             for space, p in data.patterns.items() if len(p.get("errors", ())) == 2]
    return (" Pattern autoencoder held-out MSE: " + "; ".join(parts) + ".") if parts else ""


class ExplorerApp:
    """The page of one session: a run picker, then the explorer of the chosen run (or the
    progress of the demo sweep while it runs)."""

    def __init__(self, runs_dir: Path, run: str = DEMO_RUN, demo_images: int | None = None,
                 demo_options: SweepOptions = SweepOptions()):
        self.runs_dir = Path(runs_dir)
        self.demo_images, self.demo_options = demo_images, demo_options
        self.job: SweepJob | None = None
        self.views: ExplorerViews | None = None
        self.state: ExplorerState | None = None
        names = run_names(self.runs_dir)
        options = sorted(set(names) | ({run} if run == DEMO_RUN else set()))
        self.picker = pn.widgets.Select(label="run", options=options or [run], value=run)
        self.picker.param.watch(lambda e: self.open(e.new), "value")
        self.sidebar = pn.Column(sizing_mode="stretch_width")
        self.main = pn.Column(sizing_mode="stretch_width")
        self._poll = None
        # BootstrapTemplate: unlike the Fast templates it fetches no web font, so the page
        # works offline.
        self.template = pn.template.BootstrapTemplate(
            title="vit-jax-va explorer: how does attention work in this ViT?",
            sidebar=[self.picker, self.sidebar], main=[self.main], sidebar_width=290,
            header_background="#2b5fa8")
        self.open(run)

    def open(self, name: str) -> None:
        """Show run `name` (one of the runs directory's runs; nothing else is opened)."""
        if name not in run_names(self.runs_dir) and name != DEMO_RUN:
            self._message(f"No run named `{name}` in `{self.runs_dir}`.")
            return
        path = self.runs_dir / name
        if name == DEMO_RUN:
            with _RETIRE_LOCK:  # one session moves a stale demo run aside, the others see it gone
                from vit_jax_va.demo import retire_stale_demo_run

                if retire_stale_demo_run(path) is not None:
                    self.picker.options = sorted(set(run_names(self.runs_dir)) | {DEMO_RUN})
        try:
            data = load_run(path)
        except (store.RunError, FileNotFoundError) as err:
            missing = not (path / store.MANIFEST).is_file() or "incomplete" in str(err)
            if name == DEMO_RUN and missing:  # compute it (or finish it) first
                self._show_sweep(path)
            else:
                self._message(f"Cannot open run `{name}`: {err}")
            return
        except Exception as err:  # noqa: BLE001  (shown in the page, not only the server's log)
            self._message(f"Cannot open run `{name}`: {type(err).__name__}: {err}")
            return
        self.show(data)

    def show(self, data: RunData) -> None:
        self.state = ExplorerState(data)
        self.views = ExplorerViews(data, self.state)
        self.sidebar[:] = [controls(data, self.state)]
        self.main[:] = [pn.pane.Markdown(
            f"**Run** `{data.name}`: {data.num_images} images, {data.depth} layers x "
            f"{data.num_heads} heads, {data.grid[0]}x{data.grid[1]} patches + "
            f"{data.num_prefix} prefix token(s); model `{data.run.manifest['model'].get('source', '?')}`."
            + pattern_errors(data),
            margin=(0, 10)), main_area(self.views)]

    def _message(self, text: str) -> None:
        self.sidebar[:] = []
        self.main[:] = [pn.pane.Alert(text, alert_type="warning")]

    def _show_sweep(self, path: Path) -> None:
        job = self.job = demo_sweep(path, self.demo_images, self.demo_options)
        bar = pn.indicators.Progress(value=0, max=100, width=500)
        status = pn.pane.Markdown("", margin=(0, 10))
        log = pn.pane.Str("", styles={"font-size": "11px"})
        self.sidebar[:] = []
        self.main[:] = [pn.pane.Markdown(
            f"## Computing the demo run\nThere is no run of the shipped demo model yet, so the "
            f"explorer is running the sweep (`vit-va sweep`) into `{path}` first. This page "
            f"switches to the explorer when it is done."), bar, status, log]

        def update():
            bar.value = int(100 * job.done / job.total)
            status.object = f"**{job.stage}**: {job.done} / {job.total}"
            log.object = "\n".join(job.lines[-12:])
            if job.finished:
                self._stop_poll()
                if job.error:
                    self._message(f"The demo sweep failed: {job.error}")
                else:
                    self.picker.options = sorted(set(run_names(self.runs_dir)) | {DEMO_RUN})
                    self.open(DEMO_RUN)
        if pn.state.curdoc is not None:
            self._poll = pn.state.add_periodic_callback(update, period=500)
        else:  # not served (tests): wait here
            while not job.finished:
                time.sleep(0.2)
            update()

    def _stop_poll(self) -> None:
        if self._poll is not None:
            self._poll.stop()
            self._poll = None


def build_app(runs_dir: str | Path | None = None, run: str | None = None,
              demo_images: int | None = None) -> ExplorerApp:
    """One session's explorer: call once per browser session (creates its own state)."""
    pn.extension(sizing_mode="fixed", notifications=False)
    hv.extension("bokeh", logo=False)
    views.set_defaults()
    default_dir, default_run, default_demo_images = settings()
    return ExplorerApp(Path(runs_dir) if runs_dir is not None else default_dir, run or default_run,
                       demo_images if demo_images is not None else default_demo_images)


def serve(runs_dir: str | Path, run: str = DEMO_RUN, *, port: int = 5006,
          address: str = "localhost", show: bool = False) -> None:
    """Serve the explorer (`vit-va explore`) until interrupted; one app per browser session."""
    runs_dir = Path(runs_dir).absolute()
    pn.serve(lambda: build_app(runs_dir, run).template, port=port, address=address, show=show,
             title="vit-jax-va explorer", websocket_origin=[f"{address}:{port}"],
             print_url=True)
