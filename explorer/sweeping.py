"""The demo sweep as the explorer runs it: what `vit-va sweep` with no arguments does (the same
resolution, `vit_jax_va.inputs.sweep_inputs`, and `vit_jax_va.Sweep`), with progress reported to
a callback that the page shows instead of a terminal progress bar."""

from __future__ import annotations

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
