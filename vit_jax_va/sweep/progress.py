"""Progress of the sweep's stages: reported to a callback `progress(stage, done, total)`, which
is a terminal bar (`terminal_progress`), the explorer's page, or anything a caller passes."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class StageProgress:
    """One stage's progress, reported to `progress(stage, done, total)` (None: not at all)."""

    def __init__(self, progress: Callable[[str, int, int], None] | None, stage: str, total: int):
        self.progress, self.stage, self.total, self.done = progress, stage, total, 0

    def __enter__(self) -> "StageProgress":
        self.update(0)
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.stage, self.done, self.total)


_UNITS = {"analyse": "img", "collect": "group", "curve": "order", "patterns": "space",
          "overview": "layout"}


def terminal_progress() -> Callable[[str, int, int], None]:
    """A progress callback that draws a tqdm bar per stage on stderr."""
    from tqdm.auto import tqdm

    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=total, desc=stage, unit=_UNITS.get(stage, "step"),
                                     dynamic_ncols=True, file=sys.stderr)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return progress
