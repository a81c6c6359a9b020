"""Server-side time of a selection round trip in the explorer.

Builds one session of the app in-process for a run (default: the demo run), renders the whole
page into Bokeh models in a Bokeh document (as `panel serve` does for a new browser tab), then
changes the selection on the session's state and times until every dependent view has
re-rendered and the document patch the server would send to the browser is serialised (without
a server event loop the marks layers redraw synchronously; the script checks that the titles
did change). Prints median and p95 per kind of selection, the patch
size, and their ratio to two baselines measured in the same process: the first render of the
page, and re-reading the run from disk.

    python benchmarks/explorer_roundtrip.py [--runs runs] [--run demo] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _ms(seconds: list[float]) -> tuple[float, float]:
    values = np.asarray(seconds) * 1e3
    return float(np.median(values)), float(np.percentile(values, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="runs directory (default: runs)")
    parser.add_argument("--run", default="demo", help="run name (default: demo)")
    parser.add_argument("--repeats", type=int, default=30, help="round trips per kind")
    args = parser.parse_args(argv)

    import panel as pn

    from explorer.app import build_app
    from explorer.data import RunData

    path = Path(args.runs) / args.run
    if not (path / "manifest.json").is_file():
        print(f"no run at {path}: run `vit-va sweep` first (or pass --runs/--run)", file=sys.stderr)
        return 2

    start = time.perf_counter()
    RunData(path)
    reread = time.perf_counter() - start

    from bokeh.document import Document
    from bokeh.protocol import Protocol

    start = time.perf_counter()
    app = build_app(args.runs, args.run)
    document = Document()
    root = pn.panel(app.main).get_root(document)
    document.add_root(root)
    first_render = time.perf_counter() - start
    events = []
    document.on_change(events.append)
    protocol = Protocol()

    def patch_bytes() -> int:
        """Serialise the changes since the last call, as the server's PATCH-DOC message."""
        if not events:
            return 0
        message = protocol.create("PATCH-DOC", list(events))
        events.clear()
        return len(message.content_json) + sum(len(b.data) for b in message.buffers)

    state, data = app.state, app.state.data
    c2_title = _title_getter(root, "C2 ·")
    rng = np.random.default_rng(0)
    kinds = {
        "head (B1/C1/D1 click)": lambda i: state.select_head(int(rng.integers(data.num_heads_total))),
        "image (A click)": lambda i: state.select_image(int(rng.integers(data.num_images))),
        "prune mode (B2 click)": lambda i: setattr(state, "mode", ("head", "cls", "patch", "cross")[i % 4]),
        "source token (D2/D4 click)": lambda i: setattr(state, "source_token", int(rng.integers(data.num_tokens))),
    }
    # Warm up every path once (JIT of live attention, caches), as a session does on first use.
    for change in kinds.values():
        change(0)
    patch_bytes()
    results, sizes = {}, {}
    for kind, change in kinds.items():
        times, size = [], []
        for i in range(args.repeats):
            start = time.perf_counter()
            change(i + 1)
            size.append(patch_bytes())
            times.append(time.perf_counter() - start)
            # The views re-render inside the change; if they did not, the timing is meaningless.
            assert data.head_label(state.head) in c2_title() and data.image_label(state.image) in c2_title(), \
                "C2 did not re-render synchronously"
        results[kind] = _ms(times)
        sizes[kind] = float(np.median(size))

    print(f"run {path} ({data.num_images} images, {data.depth}x{data.num_heads} heads, "
          f"{data.num_tokens} tokens); {args.repeats} round trips per kind")
    print(f"baseline: first render of the page {first_render * 1e3:.0f} ms; "
          f"re-reading the run from disk {reread * 1e3:.0f} ms")
    for kind, (median, p95) in results.items():
        print(f"{kind:28s} median {median:7.1f} ms  p95 {p95:7.1f} ms  patch {sizes[kind] / 1e3:6.1f} kB  "
              f"= {median / (first_render * 1e3):.3f} x first render, "
              f"{median / (reread * 1e3):.2f} x re-read")
    return 0


def _title_getter(root, prefix: str):
    """A function returning the current title of the first Bokeh figure whose title starts
    with `prefix` in the rendered page."""
    from bokeh.models import Plot

    figures = [m for m in root.select({"type": Plot}) if m.title is not None
               and (m.title.text or "").startswith(prefix)]
    if not figures:
        raise RuntimeError(f"no figure titled {prefix!r}...")
    return lambda: figures[0].title.text


if __name__ == "__main__":
    sys.exit(main())
