"""Click-to-paint latency of the explorer where the user sits: in Chromium.

Serves a run with `panel serve explorer` on a free localhost port (`tests/browser.py`), opens it
in Debian's Chromium (Playwright) and clicks, alternately between two targets so that every
click changes the selection:
- head: a head's dot in B1 (C2, D4 and the other head views follow);
- image: an isolated image in A (B1, D4 and the other image views follow).
A click is timed in the page from the pointer going down until the frame painted after the last
document patch the server sent for it (`requestAnimationFrame` after the last change of the
Bokeh document, once the dependent titles name the new selection and no websocket message came
for `QUIET_MS`). The time is split into where it goes: click -> first message from the server
(the server's work for the first views and the websocket), first -> last message (the further
patches), last message -> paint (the browser applying and drawing the last patch). The
baseline, measured in the same page: the browser's floor, from a call into the page to its
next painted frame.

    python benchmarks/explorer_clicks.py [--runs runs] [--run demo] [--clicks 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, open_page, serve  # noqa: E402

# A patch that comes later than this after the previous one belongs to no click.
QUIET_MS = 400
# Before the page's scripts: the page's clock, with the time the pointer went down, every
# websocket message from the server and, for every change of a Bokeh document, its time and the
# time of the frame painted after it.
INIT_JS = """(() => {
  const c = window.__clicks = {down: 0, received: [], changes: []};
  document.addEventListener("pointerdown", () => {
    c.down = performance.now(); c.received = []; c.changes = [];
  }, true);
  const Socket = window.WebSocket;
  window.WebSocket = function (...args) {
    const socket = new Socket(...args);
    socket.addEventListener("message", () => c.received.push(performance.now()));
    return socket;
  };
  Object.assign(window.WebSocket, Socket);
  window.WebSocket.prototype = Socket.prototype;
})();"""
CLOCK_JS = """() => {
  const c = window.__clicks;
  for (const doc of Bokeh.documents)
    doc.on_change(event => {
      const model = event.model || event.column_source || {};
      const change = {at: performance.now(), painted: null,
                      what: `${model.type || event.constructor.name} ${event.attr || ""}`};
      c.changes.push(change);
      requestAnimationFrame(() => { change.painted = performance.now(); });
    });
}"""
# Once the figures whose titles start with each prefix name `expected` and no message came for
# QUIET_MS: [first message, last message, paint after the last change] in ms after the pointer
# went down.
SETTLED_JS = """async ([prefixes, expected, quiet]) => {
  const c = window.__clicks;
  const named = () => prefixes.every(prefix => {
    for (const v of Bokeh.index.all_views())
      if (v.frame && v.model.title && (v.model.title.text || "").startsWith(prefix))
        return v.model.title.text.includes(expected);
    return false;
  });
  const deadline = performance.now() + 60000;
  while (performance.now() < deadline) {
    await new Promise(r => setTimeout(r, 20));
    const last = c.changes[c.changes.length - 1], received = c.received[c.received.length - 1];
    if (named() && received && last && last.painted !== null && performance.now() - received > quiet)
      return [c.received[0] - c.down, received - c.down, last.painted - c.down, c.received.length,
              c.changes.map(change => [change.at - c.down, change.what])];
  }
  return null;
}"""
# The browser's floor: from a call into the page to its next painted frame.
FLOOR_JS = """() => new Promise(r => {
  const down = performance.now();
  requestAnimationFrame(() => r(performance.now() - down));
})"""
POSITION_JS = """([prefix, x, y]) => {
  for (const v of Bokeh.index.all_views()) {
    if (!(v.frame && v.model.title && v.model.title.text.startsWith(prefix))) continue;
    v.el.scrollIntoView({block: "center"});
    const box = v.el.getBoundingClientRect();
    return [box.left + v.frame.x_scale.compute(x), box.top + v.frame.y_scale.compute(y)];
  }
  return null;
}"""


def _stats(values: list[float]) -> str:
    v = np.asarray(values)
    return f"median {np.median(v):7.1f} ms  p95 {np.percentile(v, 95):7.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs", help="runs directory (default: runs)")
    parser.add_argument("--run", default="demo", help="run name (default: demo)")
    parser.add_argument("--clicks", type=int, default=30, help="timed clicks per kind")
    parser.add_argument("--warmup", type=int, default=4, help="untimed clicks per kind first")
    parser.add_argument("--timeline", action="store_true",
                        help="print the document changes of each kind's median click")
    args = parser.parse_args(argv)

    import playwright.sync_api

    from explorer.data import RunData
    from explorer.state import ExplorerState

    path = (Path(args.runs) / args.run).resolve()
    if not (path / "manifest.json").is_file():
        print(f"no run at {path}: run `vit-va sweep` first (or pass --runs/--run)", file=sys.stderr)
        return 2
    data = RunData(path)
    first = ExplorerState(data)
    metric = first.metric
    line = data.head_values(metric, "image", first.image).values.reshape(-1)
    heads = [int(np.argmax(line)), int(np.argmin(line))]
    xy = data.overview_xy
    gaps = np.sort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    images = [int(i) for i in np.argsort(-gaps)[:2]]

    def head_click(i: int):
        head = heads[i % 2]
        return (["B1 · " + metric, float(head), float(line[head])],
                ["C2 ·", "D4 ·"], data.head_label(head))

    def image_click(i: int):
        image = images[i % 2]
        return (["A ·", float(xy[image, 0]), float(xy[image, 1])], ["B1 ·", "D4 ·"], data.image_label(image))

    errors: list[str] = []
    results, timelines = {}, {}
    with tempfile.TemporaryDirectory() as tmp, serve(path.parent, path.name, Path(tmp) / "serve.log") as url:
        with playwright.sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = open_page(browser, url, errors, {"width": 1920, "height": 1080}, INIT_JS)
                page.get_by_text("D4 ·").first.wait_for(timeout=120_000)
                page.evaluate(CLOCK_JS)
                floor = [page.evaluate(FLOOR_JS) for _ in range(args.clicks)]
                for kind, click in (("head (B1)", head_click), ("image (A)", image_click)):
                    parts = []
                    for i in range(args.warmup + args.clicks):
                        position, prefixes, expected = click(i)
                        x, y = page.evaluate(POSITION_JS, position)
                        page.mouse.click(x, y)
                        settled = page.evaluate(SETTLED_JS, [prefixes, expected, QUIET_MS])
                        if settled is None:
                            raise RuntimeError(f"{kind} click {i}: {prefixes} never named {expected!r}")
                        if i >= args.warmup:
                            parts.append(settled[:4])
                            timelines.setdefault(kind, []).append(settled[4])
                    results[kind] = np.asarray(parts)
            finally:
                browser.close()

    print(f"run {path} ({data.num_images} images, {data.depth}x{data.num_heads} heads, "
          f"{data.num_tokens} tokens) in Chromium at 1920x1080; {args.clicks} clicks per kind "
          f"after {args.warmup} untimed")
    print(f"baseline: a call into the page -> its next painted frame (the browser's floor) {_stats(floor)}")
    for kind, parts in results.items():
        total = parts[:, 2]
        print(f"{kind:10s} click -> paint {_stats(total)}  = {np.median(total) / np.median(floor):.1f} x floor")
        print(f"{'':10s}   where it goes (medians): click -> first message {np.median(parts[:, 0]):.1f} ms, "
              f"first -> last message {np.median(parts[:, 1] - parts[:, 0]):.1f} ms, "
              f"last message -> paint {np.median(parts[:, 2] - parts[:, 1]):.1f} ms; "
              f"{np.median(parts[:, 3]):.0f} websocket frames")
        if args.timeline:
            middle = int(np.argsort(parts[:, 2])[len(parts) // 2])
            print(f"{'':10s}   the median click's document changes (ms after the click):")
            for at, what in timelines[kind][middle]:
                print(f"{'':14s}{at:8.1f}  {what}")
    if errors:
        print(f"console errors: {errors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
