"""The served explorer in a real browser: `panel serve explorer` on a free localhost port, opened
in headless Chromium with Playwright. A click on a head in B1 must change C2 and D4 to that
head, a click on an image in A must change B1 to that image, every figure's title must be shown
in full above it (in the page's fonts and in DejaVu Sans, the widest font of a fresh Debian
machine, which `.ci/run` installs), the page must log no console errors, and a screenshot goes
to `test-artifacts/explorer.png`.

Needs Debian's `chromium` (`/usr/bin/chromium`) and the `playwright` Python package; skipped
with the reason when either is missing.
"""

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from explorer.titles import TITLE_CLASS
from tests.browser import CHROMIUM, CHROMIUM_ARGS, open_page, serve
from tests.explorer_runs import REPO, backbone_runs_dir, demo_runs_dir

ARTIFACTS = REPO / "test-artifacts"

# CI sets VIT_VA_REQUIRE_BROWSER=1 so that a missing browser fails there instead of skipping.
_REQUIRED = os.environ.get("VIT_VA_REQUIRE_BROWSER") == "1"
if not Path(CHROMIUM).is_file():
    if _REQUIRED:
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
if _REQUIRED:
    import playwright.sync_api as _sync_api  # noqa: F401  (an ImportError fails the run)
    # The titles are checked in DejaVu Sans: without it the browser would silently use another font.
    _fonts = subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True).stdout
    if "DejaVu Sans" not in _fonts:
        raise RuntimeError("the font DejaVu Sans is missing (apt-get install fonts-dejavu-core)")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is missing "
                                 "(pip install playwright; no browser download needed)")

# What the page shows of each figure's title: the HTML title elements above the figures
# (`explorer.titles`), found through Panel's shadow roots by `page.locator`; and for each figure
# its title model (which names it: POSITION_JS finds a figure by it), whether the canvas draws
# that title, and the figure's width on the screen.
TITLE_BOXES_JS = """els => els.map(e => ({
  text: e.textContent, scroll: e.scrollWidth, client: e.clientWidth,
  width: e.getBoundingClientRect().width}))"""
FIGURES_JS = """() => {
  const out = [];
  for (const v of Bokeh.index.all_views()) {
    if (!(v.frame && v.model.title)) continue;
    out.push({title: v.model.title.text || "", drawn: v.model.title.visible && !!v.model.title.text,
              width: v.el.getBoundingClientRect().width});
  }
  return out;
}"""
# The widest font a fresh Debian machine has; titles are checked in it too, whatever the page's
# own fonts are on the machine that runs the test.
SET_FONT_JS = """(els, family) => { for (const e of els) e.style.fontFamily = family; }"""
POSITION_JS = """([prefix, x, y]) => {
  for (const v of Bokeh.index.all_views()) {
    if (!(v.frame && v.model.title && v.model.title.text.startsWith(prefix))) continue;
    const box = v.el.getBoundingClientRect();
    return [box.left + v.frame.x_scale.compute(x), box.top + v.frame.y_scale.compute(y)];
  }
  return null;
}"""
# Elements that scroll sideways (their content wider than they are), and every figure's box.
SIDEWAYS_JS = """() => {
  const out = [];
  for (const e of document.querySelectorAll('*')) {
    if (e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX != 'visible')
      out.push(`${e.tagName}#${e.id}.${e.className} ${e.scrollWidth} > ${e.clientWidth}`);
  }
  return out;
}"""
BOXES_JS = """() => Array.from(Bokeh.index.all_views()).filter(v => v.frame && v.model.title).map(v => {
  const b = v.el.getBoundingClientRect();
  return {title: v.model.title.text || "", box: [b.left, b.top, b.right, b.bottom]};
})"""
# A column of the data a figure draws (the first of its renderers that has it).
COLUMN_JS = """([prefix, column]) => {
  for (const v of Bokeh.index.all_views()) {
    if (!(v.frame && v.model.title && v.model.title.text.startsWith(prefix))) continue;
    for (const r of v.model.renderers) {
      const d = r.data_source && r.data_source.data;
      if (d && column in d) return Array.from(d[column]);
    }
  }
  return null;
}"""
# Scroll a figure (by its title's first words) into the middle of the screen.
SCROLL_JS = """prefix => {
  for (const v of Bokeh.index.all_views())
    if (v.frame && v.model.title && v.model.title.text.startsWith(prefix)) { v.el.scrollIntoView({block: "center"}); return true; }
  return false;
}"""
# The four overviews of the paper's system figure, by their titles' first words.
OVERVIEWS = ("A ·", "B1 · probability", "B1 · layers x heads", "C1 ·", "D1 · patch patterns",
             "D1 · cluster prototypes")


def _served(tmp_path_factory, runs_dir, run: str):
    """The URL of `panel serve explorer` on the run `run` of `runs_dir(base)`, and its path."""
    base = tmp_path_factory.getbasetemp()
    runs = runs_dir(base)
    with serve(runs, run, base / f"panel-serve-{run}.log") as url:
        yield url, runs / run


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _served(tmp_path_factory, demo_runs_dir, "demo")


@pytest.fixture(scope="module")
def backbone_server(tmp_path_factory):
    yield from _served(tmp_path_factory, backbone_runs_dir, "dinov2-tiny")


def _titles(page) -> list[str]:
    """The figure titles the page shows (its HTML titles)."""
    return [t.strip() for t in page.locator(f".{TITLE_CLASS}").all_text_contents()]


def _wait_title(page, prefix: str, contains: str, timeout: float = 60.0) -> str:
    """The title the page shows starting with `prefix`, once it contains `contains`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        titles = [t for t in _titles(page) if t.startswith(prefix)]
        if titles and contains in titles[0]:
            return titles[0]
        time.sleep(0.25)
    raise AssertionError(f"no figure title {prefix!r}... containing {contains!r}; titles: {_titles(page)}")


def _clipped_titles(page, timeout: float = 20.0) -> list[str]:
    """What is wrong with the titles as the page shows them, in its own fonts and in the widest
    font (empty: every figure's title is shown in full above it). A title is clipped if the
    canvas draws it (Bokeh cuts it at the figure's edge), if it is not shown above its figure,
    if its text overflows its element or if the element is wider than its figure.

    A figure's title and its HTML title reach the browser in separate messages, so the check
    is repeated for up to `timeout` seconds until nothing is wrong."""
    deadline = time.monotonic() + timeout
    while True:
        problems = _title_problems(page)
        if not problems or time.monotonic() > deadline:
            return problems
        time.sleep(0.5)


def _title_problems(page) -> list[str]:
    figures = page.evaluate(FIGURES_JS)
    widths = {f["title"]: f["width"] for f in figures if f["title"]}
    problems = [f"{f['title']}: drawn on the canvas" for f in figures if f["drawn"]]
    locator = page.locator(f".{TITLE_CLASS}")
    for font in ("page", "DejaVu Sans"):
        if font != "page":
            locator.evaluate_all(SET_FONT_JS, f"'{font}'")
        boxes = locator.evaluate_all(TITLE_BOXES_JS)
        shown = {b["text"].strip() for b in boxes}
        problems += [f"{t}: not shown above its figure" for t in widths if t not in shown]
        for b in boxes:
            text = b["text"].strip()
            if b["scroll"] > b["client"] + 1:
                problems.append(f"{text} ({font} font): {b['scroll']} px of text in {b['client']} px")
            if text in widths and b["width"] > widths[text] + 1:
                problems.append(f"{text}: {b['width']:.0f} px wide above a {widths[text]:.0f} px figure")
    locator.evaluate_all(SET_FONT_JS, "")  # back to the page's fonts
    return sorted(set(problems))


def test_served_explorer_links_views(server):
    from explorer import views
    from explorer.data import RunData
    from explorer.state import ExplorerState

    url, run_path = server
    data = RunData(run_path)
    first = ExplorerState(data)  # what a new session opens on
    target = (first.head + data.num_heads + 1) % data.num_heads_total
    # An isolated point of the overview, so that a click at its position selects it alone.
    xy = data.overview_xy
    gaps = np.sort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    image = int(np.argmax(np.where(np.arange(len(xy)) == first.image, -1, gaps)))

    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_page(browser, url, errors, {"width": 1800, "height": 2050})
            _wait_title(page, "D4 ·", data.head_label(first.head))
            c2_before = _wait_title(page, "C2 ·", data.head_label(first.head))
            d4_before = _wait_title(page, "D4 ·", data.head_label(first.head))
            assert _clipped_titles(page) == []

            # Click head `target` in B1 (its x is the flat head index).
            line = data.head_values("probability", "image", first.image).values.reshape(-1)
            x, y = page.evaluate(POSITION_JS, ["B1 · probability", target, float(line[target])])
            page.mouse.click(x, y)
            c2_after = _wait_title(page, "C2 ·", data.head_label(target))
            d4_after = _wait_title(page, "D4 ·", data.head_label(target))
            assert c2_after != c2_before and d4_after != d4_before
            _wait_title(page, "B1 · probability", f" · {data.head_label(target)}")

            # Click image `image` in A: B1 now shows that image's importance.
            b1_before = _wait_title(page, "B1 · probability", f"image {data.ids[first.image]}")
            x, y = page.evaluate(POSITION_JS, ["A ·", float(xy[image, 0]), float(xy[image, 1])])
            page.mouse.click(x, y)
            b1_after = _wait_title(page, "B1 · probability", f"image {data.ids[image]} ")
            assert b1_after != b1_before
            _wait_title(page, "A ·", f"image {data.ids[image]} ")
            # D follows the image too (its attention may be computed live: the first time, the
            # model compiles).
            _wait_title(page, "D4 ·", f"image {data.ids[image]}")
            assert _clipped_titles(page) == []
            # Several heads: click the prototype of the cluster with the most heads in D1.
            protos = data.prototypes(first.space)
            _, proto_h, proto_w = protos.shape
            cluster = max(range(len(protos)), key=lambda k: len(data.heads_of_cluster(first.space, k)))
            chosen = data.heads_of_cluster(first.space, cluster)
            assert len(chosen) > 1
            x, y = page.evaluate(POSITION_JS, ["D1 · cluster prototypes", (cluster + 0.5) * (proto_w + 1),
                                               proto_h / 2])
            page.mouse.click(x, y)
            shown = min(len(chosen), views.MAX_EXTRA_HEADS + 1)  # B2 draws at most this many
            _wait_title(page, "B2 ·", f"{data.head_label(chosen[0])} +{shown - 1}")
            assert _clipped_titles(page) == []
            # The class scope has the longest titles (class name and image count).
            page.get_by_role("button", name="class", exact=True).click()
            _wait_title(page, "C1 ·", f"class {data.class_label(int(data.image_class[image]))}")
            assert _clipped_titles(page) == []
            page.get_by_role("button", name="image", exact=True).click()
            _wait_title(page, "C1 ·", f"image {data.ids[image]}")
            page.mouse.move(1, 1)  # no tooltip in the screenshot
            time.sleep(1.0)  # let the last re-render paint before the screenshot
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "explorer.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "explorer.png").stat().st_size > 50_000
    assert errors == [], errors



def test_a_backbone_run_in_the_browser(backbone_server):
    """A run without a classifier: the page opens on the feature metric, B3 says why it has no
    predictions, a click on a head in B1 still links C2 and D4, and nothing is clipped."""
    from explorer.data import NO_CLASSIFIER, RunData
    from explorer.state import ExplorerState

    url, run_path = backbone_server
    data = RunData(run_path)
    assert not data.has_classifier and data.default_metric == "feature_cos"
    first = ExplorerState(data)
    target = (first.head + data.num_heads + 1) % data.num_heads_total

    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_page(browser, url, errors, {"width": 1800, "height": 2050})
            c2_before = _wait_title(page, "C2 ·", data.head_label(first.head))
            d4_before = _wait_title(page, "D4 ·", data.head_label(first.head))
            _wait_title(page, "B1 · feature_cos", data.ids[first.image])
            page.get_by_text("B3 · no top-5 predictions").first.wait_for(timeout=60_000)
            page.get_by_text(NO_CLASSIFIER[:40]).first.wait_for(timeout=60_000)
            assert _clipped_titles(page) == []

            line = data.head_values("feature_cos", "image", first.image).values.reshape(-1)
            x, y = page.evaluate(POSITION_JS, ["B1 · feature_cos", target, float(line[target])])
            page.mouse.click(x, y)
            assert _wait_title(page, "C2 ·", data.head_label(target)) != c2_before
            assert _wait_title(page, "D4 ·", data.head_label(target)) != d4_before
            _wait_title(page, "B1 · feature_cos", f" · {data.head_label(target)}")
            assert _clipped_titles(page) == []
            page.mouse.move(1, 1)
            time.sleep(1.0)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "explorer-backbone.png"), full_page=True)
        finally:
            browser.close()
    assert errors == [], errors


def _isolated_c1_head(page, data, image: int) -> int:
    """The head whose dot in C1 lies farthest (on the screen) from every other head's dot, so
    that a click on it selects it alone."""
    entropy = data.entropy_per_head("image", image, -1).reshape(-1)
    layer = np.arange(len(entropy)) // data.num_heads
    xy = np.asarray([page.evaluate(POSITION_JS, ["C1 ·", float(layer[h]), float(entropy[h])])
                     for h in range(len(entropy))])
    gaps = np.sort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    head = int(np.argmax(gaps))
    assert gaps[head] > 10, f"no C1 dot stands apart (largest gap {gaps[head]:.1f} px)"
    return head


@pytest.mark.parametrize("width,height", [(1366, 768), (1920, 1080)])
def test_the_page_fits_the_screen(server, width, height):
    """At a laptop's 1366 x 768 and at 1920 x 1080 nothing scrolls sideways and no title is
    clipped; at 1920 x 1080 the four overviews (A, B1 with its heat map, C1, D1 with its
    prototypes) are all on the first screen; a click on a head in C1 makes C2 draw that head's
    stored n-hop profile."""
    from explorer.data import RunData
    from explorer.state import ExplorerState

    url, run_path = server
    data = RunData(run_path)
    first = ExplorerState(data)
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_page(browser, url, errors, {"width": width, "height": height})
            _wait_title(page, "D4 ·", data.head_label(first.head))
            _wait_title(page, "C2 ·", data.head_label(first.head))
            assert page.evaluate(SIDEWAYS_JS) == []
            assert page.evaluate("() => document.documentElement.scrollWidth") <= width
            boxes = page.evaluate(BOXES_JS)
            for prefix in OVERVIEWS:
                found = [b["box"] for b in boxes if b["title"].startswith(prefix)]
                assert len(found) == 1, (prefix, [b["title"] for b in boxes])
                left, top, right, bottom = found[0]
                assert right <= width, (prefix, found[0])
                if width >= 1920:
                    assert bottom <= height, f"{prefix} ends at y={bottom:.0f}, below the first screen"
            assert _clipped_titles(page) == []

            assert page.evaluate(SCROLL_JS, "C1 ·")
            time.sleep(0.5)
            head = _isolated_c1_head(page, data, first.image)
            entropy = data.entropy_per_head("image", first.image, -1).reshape(-1)
            x, y = page.evaluate(POSITION_JS, ["C1 ·", float(head // data.num_heads), float(entropy[head])])
            page.mouse.click(x, y)
            _wait_title(page, "C2 ·", data.head_label(head))
            stored = data.strength["profile"][first.image].reshape(data.num_heads_total, -1)[head]
            deadline = time.monotonic() + 30
            while True:
                drawn = page.evaluate(COLUMN_JS, ["C2 ·", "strength"])
                if drawn is not None and np.allclose(drawn, stored, atol=1e-6) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            np.testing.assert_allclose(drawn, stored, atol=1e-6)
            assert page.evaluate(SIDEWAYS_JS) == []
            page.mouse.move(1, 1)
            time.sleep(1.0)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"explorer-{width}x{height}.png"))
        finally:
            browser.close()
    assert errors == [], errors


# Every figure of a static page: its title, its output backend and whether it has a save tool.
EXPORT_JS = """() => [...Bokeh.index.all_views()].filter(v => v.frame && v.model.title).map(v => ({
  title: v.model.title.text || "", backend: v.model.output_backend,
  save: v.model.toolbar.tools.some(t => t.constructor.__name__ === "SaveTool")}))"""


# A static page has drawn every figure of its document.
DRAWN_JS = """() => {
  let figures = 0;
  for (const d of Bokeh.documents) for (const m of d.all_models) if (m.constructor.__name__ === "Figure") figures++;
  return figures > 0 && [...Bokeh.index.all_views()].filter(v => v.frame).length >= figures;
}"""


@pytest.mark.parametrize("svg", [False, True])
def test_the_report_opens_offline_and_shows_the_stores_numbers(tmp_path_factory, tmp_path, svg):
    """`vit-va report`'s HTML file opens in Chromium with every network request refused (no
    server, no CDN): no console error, the overviews and the top heads' detail views drawn, each
    with a save tool (PNG, or SVG with --svg), and the table's numbers equal to the store's,
    recomputed here from the store's arrays."""
    from vit_jax_va import store

    run_path = demo_runs_dir(tmp_path_factory.getbasetemp()) / "demo"
    out = tmp_path / "report.html"
    subprocess.run(["vit-va", "report", str(run_path), "--out", str(out), "--top", "3",
                    *(["--svg"] if svg else [])], check=True, cwd=REPO)

    run = store.open_run(run_path)
    imp, strength = run.arrays("importance"), run.arrays("strength")
    mode = [str(m) for m in np.asarray(imp["modes"])].index("head")
    pruned = np.asarray(imp["prob"][mode], np.float64).mean(axis=-1).reshape(-1)  # [L*H]
    baseline = float(np.asarray(imp["baseline_prob"], np.float64).mean())
    entropy = np.asarray(strength["entropy"], np.float64).mean(axis=0).reshape(-1)
    distance = np.asarray(strength["mean_distance"], np.float64).mean(axis=0).reshape(-1)
    heads = run.config.num_heads

    errors, requests = [], []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            def refuse(route):
                if route.request.url.startswith("file:"):
                    route.continue_()
                else:
                    requests.append(route.request.url)
                    route.abort()
            page.route("**/*", refuse)
            page.goto(out.as_uri())
            table = page.locator("table").filter(has_text="importance").first
            table.wait_for(timeout=60_000)
            rows = [r.split("\t") for r in table.locator("tr").all_inner_texts()[1:]]
            page.wait_for_function(DRAWN_JS, timeout=120_000)
            figures = page.evaluate(EXPORT_JS)
        finally:
            browser.close()
    assert errors == [] and requests == [], (errors, requests)

    assert len(rows) == 3
    shown = []
    for rank, (cells, expected_rank) in enumerate(zip(rows, ("1", "2", "3"))):
        cells = [c.strip() for c in cells]
        assert cells[0] == expected_rank
        layer, head = (int(v) for v in cells[1][1:].split("H"))
        flat = layer * heads + head
        shown.append(flat)
        assert float(cells[2]) == pytest.approx(baseline - pruned[flat], abs=6e-5)
        assert float(cells[3]) == pytest.approx(pruned[flat], abs=6e-5)
        assert float(cells[4]) == pytest.approx(entropy[flat], abs=6e-4)
        assert float(cells[5]) == pytest.approx(distance[flat], abs=0.06)
    # The three heads with the largest drop (values, not the order of ties).
    drops = np.sort(baseline - pruned)[::-1][:3]
    np.testing.assert_allclose([baseline - pruned[h] for h in shown], drops, atol=1e-9)

    titles = [f["title"] for f in figures]
    for prefix in ("A ·", "B1 · probability", "C1 ·", "D1 · patch patterns"):
        assert any(t.startswith(prefix) for t in titles), (prefix, titles)
    for flat in shown:  # each top head's details
        label = f"L{flat // heads}H{flat % heads}"
        assert any(t.startswith("C2 ·") and label in t for t in titles), (label, titles)
        assert any(t.startswith("D4 ·") and label in t for t in titles), (label, titles)
    bokeh_views = [f for f in figures if not f["title"].startswith(("Pruning curve", "D1 · cluster"))]
    assert bokeh_views and all(f["save"] for f in bokeh_views), bokeh_views
    assert {f["backend"] for f in bokeh_views} == {"svg" if svg else "canvas"}
