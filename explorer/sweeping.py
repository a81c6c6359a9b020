"""The demo sweep as the explorer runs it: exactly `vit-va sweep` with no arguments (the CLI's
defaults, its model and data resolution, `vit_jax_va.sweep.Sweep`), except that progress goes to
a callback the page shows instead of a terminal progress bar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


class _Bar:
    """What `Sweep` uses of a tqdm bar (a context manager with `update`), reporting to a
    callback `progress(stage, done, total)`."""

    def __init__(self, progress, total: int, desc: str):
        self.progress, self.total, self.desc, self.n = progress, total, desc, 0

    def __enter__(self) -> "_Bar":
        self.progress(self.desc, 0, self.total)
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n
        self.progress(self.desc, self.n, self.total)


def run_demo_sweep(out: str | Path, log: Callable[[str], None] = print,
                   progress: Callable[[str, int, int], None] = lambda *a: None,
                   extra_args: tuple[str, ...] = ()) -> Path:
    """Run `vit-va sweep --out OUT [EXTRA_ARGS]` (the shipped demo model on the shipped images)."""
    from vit_jax_va import cli
    from vit_jax_va.sweep import Sweep

    args = cli.build_parser().parse_args(["sweep", "--out", str(out), *extra_args])
    model, dataset, options, out, source = cli.sweep_inputs(args, log=log)

    class PageSweep(Sweep):
        def _bar(self, total: int, desc: str, unit: str):
            return _Bar(progress, total, desc)

    return PageSweep(model, dataset, out, options=options, model_source=source, log=log,
                     progress=False).run()
