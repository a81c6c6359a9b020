"""The explorer app: one page with the four areas (A images, B importance, C strength,
D patterns), a sidebar with the selection controls, and the links between the views.

`build_app()` is called once per browser session (by `panel serve explorer` or `vit-va
explore`): it creates that session's `ExplorerState`, its streams and its views, so sessions
never share a selection. The run's arrays are opened once per process (`load_run`)
and shared read-only.

Where the runs are: `--runs DIR` / `--run NAME` after `panel serve explorer --args`, or the
environment variables `VIT_VA_RUNS` and `VIT_VA_RUN` (and `--demo-images 200` to make a missing
demo run smaller); by default `runs/` in the working directory and its `demo` run. The run picker lists the runs directly under the runs directory
and nothing else, so a browser cannot make the server open an arbitrary path. When the demo run
does not exist yet (a fresh install), the page opens at once on the shipped first run (the demo
model on its first 64 images, swept in advance: `vit_jax_va.demo.first_run`, unpacked to
`demo-first-64`) and computes the full demo run in the background (the same sweep as `vit-va
sweep`), its progress in a banner above the views, which offers to open it when it is done; a
later start opens the full run. A demo run of an earlier demo model (or results-store schema) is
moved aside to `demo-<its weights hash>` first (`vit_jax_va.demo.retire_stale_demo_run`).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import holoviews as hv
import panel as pn

from explorer import views
from explorer.data import RunData
from explorer.layout import controls, main_area, pattern_errors, run_summary
from explorer.state import ExplorerState
from explorer.sweeping import SweepJob, demo_sweep
from explorer.wiring import ExplorerViews
from vit_jax_va import store
from vit_jax_va.sweep import SweepOptions

RUNS_ENV, RUN_ENV = "VIT_VA_RUNS", "VIT_VA_RUN"
DEMO_RUN = "demo"
_DEMO_LOCK = threading.Lock()  # one session retires or unpacks a demo run at a time


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


@pn.cache(max_items=8)
def _open_run(path: str, manifest_mtime: float) -> RunData:
    return RunData(path)


def load_run(path: str | Path) -> RunData:
    """The `RunData` of a run directory, shared by every session of the process: opened once
    per manifest version (a run that grows or is replaced is opened anew), and at most 8 runs
    are held (least recently used first out)."""
    path = Path(path).absolute()
    return _open_run(str(path), (path / store.MANIFEST).stat().st_mtime)


def run_names(runs_dir: Path) -> list[str]:
    """Names of the runs directly under `runs_dir`."""
    return [p.name for p in store.list_runs(runs_dir)]


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
        self.picker = pn.widgets.Select(label="run", options=options or [run], value=run, sizing_mode="stretch_width")
        self.picker.param.watch(self._picked, "value")
        self._quiet = False  # set while the app itself moves the picker
        self.sidebar = pn.Column(sizing_mode="stretch_width")
        self.banner = pn.Column(sizing_mode="stretch_width")  # the full demo sweep's progress
        self.main = pn.Column(sizing_mode="stretch_width")
        self._poll = None
        # BootstrapTemplate: unlike the Fast templates it fetches no web font, so the page
        # works offline.
        self.template = pn.template.BootstrapTemplate(
            title="vit-jax-va explorer: how does attention work in this ViT?",
            sidebar=[self.picker, self.sidebar], main=[self.banner, self.main], sidebar_width=290,
            header_background="#2b5fa8")
        self.open(run)

    def _picked(self, event) -> None:
        if not self._quiet:
            self.open(event.new)

    def _pick(self, name: str) -> None:
        """Show `name` in the picker without opening it again."""
        self._quiet = True
        try:
            self.picker.options = sorted(set(run_names(self.runs_dir)) | {DEMO_RUN, name})
            self.picker.value = name
        finally:
            self._quiet = False

    def open(self, name: str) -> None:
        """Show run `name` (one of the runs directory's runs; nothing else is opened)."""
        if name not in run_names(self.runs_dir) and name != DEMO_RUN:
            self._message(f"No run named `{name}` in `{self.runs_dir}`.")
            return
        path = self.runs_dir / name
        if name == DEMO_RUN:
            with _DEMO_LOCK:  # one session moves a stale demo run aside, the others see it gone
                from vit_jax_va.demo import retire_stale_demo_run

                if retire_stale_demo_run(path) is not None:
                    self.picker.options = sorted(set(run_names(self.runs_dir)) | {DEMO_RUN})
        try:
            data = load_run(path)
        except (store.RunError, FileNotFoundError) as err:
            missing = not (path / store.MANIFEST).is_file() or "incomplete" in str(err)
            if name == DEMO_RUN and missing:  # compute it (or finish it) in the background
                self._first_start(path)
            else:
                self._message(f"Cannot open run `{name}`: {err}")
            return
        except Exception as err:  # noqa: BLE001  (shown in the page, not only the server's log)
            self._message(f"Cannot open run `{name}`: {type(err).__name__}: {err}")
            return
        self.show(data)

    def show(self, data: RunData) -> None:
        if data.name == DEMO_RUN:  # the full demo run: nothing left to wait for
            self.banner[:] = []
        self.state = ExplorerState(data)
        self.views = ExplorerViews(data, self.state)
        self.sidebar[:] = [controls(data, self.state)]
        self.main[:] = [pn.pane.Markdown(run_summary(data) + pattern_errors(data), margin=(0, 10)),
                        main_area(self.views)]

    def _message(self, text: str) -> None:
        self.sidebar[:] = []
        self.main[:] = [pn.pane.Alert(text, alert_type="warning")]

    def _first_start(self, path: Path) -> None:
        """No (complete) demo run: open the shipped first run now, sweep the full demo run in
        the background, and say in the banner how far it is (and offer it when done)."""
        from vit_jax_va.demo import first_run

        self._stop_poll()
        job = self.job = demo_sweep(path, self.demo_images, self.demo_options)
        bar = pn.indicators.Progress(value=0, max=100, width=300, margin=(5, 10))
        status = pn.pane.Markdown("", margin=(0, 10))
        button = pn.widgets.Button(label="Open the full demo run", color="primary",
                                   visible=False, margin=(5, 10))
        button.on_click(lambda _: self._open_full())
        count = f"{self.demo_images} images" if self.demo_images else "all shipped images"
        intro = (f"**The full demo run ({count}) is being computed** into `{path}` (the same "
                 f"sweep as `vit-va sweep`); meanwhile this page shows `{first_run.NAME}`, the demo "
                 f"model on its first {first_run.IMAGES} images, swept in advance and shipped with "
                 f"the package. A later start opens the full run.")
        self.banner[:] = [pn.pane.Alert(intro, alert_type="info", margin=(5, 10)),
                          pn.Row(bar, status, button)]
        try:
            with _DEMO_LOCK:
                first = first_run.unpack(self.runs_dir)
            data = load_run(first)
        except Exception as err:  # noqa: BLE001  (the full sweep still runs; say why in the page)
            self._message(f"Cannot open the shipped first run: {type(err).__name__}: {err}. "
                          "The full demo run is being computed; this page offers it when done.")
        else:
            self._pick(first.name)
            self.show(data)

        def update():
            bar.value = int(100 * job.done / job.total)
            status.object = f"**{job.stage}**: {job.done} / {job.total}"
            if job.finished:
                self._stop_poll()
                if job.error:
                    status.object = f"**The demo sweep failed**: {job.error}"
                else:
                    bar.value = 100
                    status.object = "**The full demo run is ready.**"
                    button.visible = True
                    self._pick(self.picker.value)  # list it
        if pn.state.curdoc is not None:
            self._poll = pn.state.add_periodic_callback(update, period=500)
        else:  # not served (tests): wait here
            while not job.finished:
                time.sleep(0.2)
            update()

    def _open_full(self) -> None:
        self.banner[:] = []
        self._pick(DEMO_RUN)
        self.open(DEMO_RUN)

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
