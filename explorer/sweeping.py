"""The demo sweep as the explorer runs it: what `vit-va sweep` with no arguments does (the same
resolution, `vit_jax_va.inputs.sweep_inputs`, and `vit_jax_va.Sweep`), in a background thread
(`SweepJob`, one per process and run directory), with progress reported to a callback that the
page shows instead of a terminal progress bar."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from vit_jax_va.inputs import sweep_inputs
from vit_jax_va.sweep import Sweep, SweepOptions


def run_demo_sweep(out: str | Path, *, images: int | None = None,
                   options: SweepOptions = SweepOptions(), log: Callable[[str], None] = print,
                   progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Sweep the shipped demo model over the first `images` shipped images (all by default)
    into `out`; `progress(stage, done, total)` follows the work."""
    inputs = sweep_inputs(out=out, images=images, options=options, log=log)
    return Sweep(inputs.model, inputs.dataset, inputs.out, options=inputs.options,
                 model_source=inputs.model_source, log=log,
                 progress=progress if progress is not None else False).run()


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
