"""The explorer's selection state and its links, without a browser: a selection made in one view
(a Bokeh event, as a click sends it) changes the state, and the views that depend on it then
show the store's data for the new selection."""

import json

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from bokeh.events import RangesUpdate, Tap
from bokeh.models import BoxSelectTool, TapTool

from explorer import views
from explorer.app import ExplorerApp, build_app, load_run
from explorer.data import RunData
from explorer.state import ExplorerState
from explorer.wiring import PICKED, ExplorerViews
from tests.explorer_runs import demo_runs_dir
from vit_jax_va import store
from vit_jax_va.demo import demo_training_record


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return demo_runs_dir(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def data(runs):
    return load_run(runs / "demo")


@pytest.fixture(scope="module")
def arrays(runs):
    run = store.open_run(runs / "demo")
    return {g: {k: np.asarray(v) for k, v in run.arrays(g).items()}
            for g in ("importance", "strength", "images", "patterns/patch")}


@pytest.fixture
def linked(data):
    state = ExplorerState(data)
    return state, ExplorerViews(data, state)


def _head_mode(arrays):
    return list(arrays["importance"]["modes"]).index("head")


def test_state_opens_on_the_most_important_head(data, arrays):
    after = arrays["importance"]["prob"][_head_mode(arrays)].mean(-1).reshape(-1)
    state = ExplorerState(data)
    assert state.head == int(np.argmin(after))
    assert state.heads == [state.head]


def test_head_selection_changes_the_head_views_to_that_heads_store_data(data, arrays):
    state = ExplorerState(data, head=0, heads=[0], image=3)
    profile = arrays["strength"]["profile"]  # [N, L, H, rings]
    L, H = data.depth, data.num_heads
    first = views.hop_profile_bars(data, state).columns["strength"]
    np.testing.assert_allclose(first, profile[3, 0, 0], rtol=1e-6)
    target = L * H - 1
    state.select_head(target)
    second = views.hop_profile_bars(data, state).columns["strength"]
    np.testing.assert_allclose(second, profile[3, L - 1, H - 1], rtol=1e-6)
    assert not np.allclose(first, second)
    # C3 follows: the selected image's entropy of the new head is marked.
    mark = views.entropy_of_image(data, state).columns["x0"][0]
    assert mark == pytest.approx(float(arrays["strength"]["entropy"][3, L - 1, H - 1]))


def test_image_selection_changes_b1_to_that_images_store_data(data, arrays):
    prob = arrays["importance"]["prob"][_head_mode(arrays)]  # [L, H, N]
    flat = prob.reshape(-1, prob.shape[-1])
    # Two images whose per-head profiles differ, so the test can tell them apart.
    a, b = 0, int(np.argmax(np.abs(flat - flat[:, :1]).max(axis=0)))
    assert a != b
    state = ExplorerState(data, image=a)
    line = lambda: views.head_importance_values(data, state).columns["y"]  # noqa: E731
    np.testing.assert_allclose(line(), flat[:, a], rtol=1e-6)
    state.select_image(b)
    np.testing.assert_allclose(line(), flat[:, b], rtol=1e-6)


def _tap(v, view, x, y):
    """A click at data position (x, y) in a view, as the browser sends it (a Bokeh `Tap`)."""
    figure = v.figures[view]
    figure._trigger_event(Tap(figure, x=x, y=y))


def _pick(v, view, indices):
    """A tap or a box selection of items of a view (A, C1, D1), as the browser sends it: a new
    selection of the data source that the view's tap and box-select tools act on."""
    renderer, = {r for tool in v.figures[view].tools if isinstance(tool, (TapTool, BoxSelectTool))
                 for r in tool.renderers}
    renderer.data_source.selected.indices = list(indices)


def test_clicks_in_views_select_heads_everywhere(linked, data, arrays):
    state, v = linked
    H = data.num_heads
    _tap(v, "B1", 5.2, 0.5)
    assert state.head == 5 and state.heads == [5]
    _tap(v, "B1 heat map", 1.1, 2.0)  # x: head, y: layer
    assert state.head == 2 * H + 1
    _pick(v, "C1", [3, 7, 4])
    assert state.heads == [3, 4, 7] and state.head == 3
    _pick(v, "D1", [4, 9])  # the primary head (4) stays primary
    assert state.heads == [4, 9] and state.head == 4
    _pick(v, "D1", [])  # an empty click keeps the selection
    assert state.heads == [4, 9]
    shares = arrays["patterns/patch"]["head_shares"]
    cluster = int(np.argmax(shares[0]))  # head 0's main cluster: at least one head has it
    w = data.prototypes("patch").shape[2]
    v.streams["D1 prototypes"].event(x=cluster * (w + 1) + 0.5, y=1.0)
    expected = [h for h in range(len(shares)) if not np.isnan(shares[h]).any()
                and np.argmax(shares[h]) == cluster]
    assert state.heads == expected


def test_clicks_choose_image_mode_source_and_threshold(linked, data):
    state, v = linked
    _pick(v, "A", [7])
    assert state.image == 7
    _tap(v, "B2", 3.1, 0.2)
    assert state.mode == "patch"
    rows, cols = data.grid
    _tap(v, "D2", 2.5, rows - 0.5)  # top row, third column
    assert state.source_token == data.num_prefix + 2
    _tap(v, "D4", 10.0, 0.2)  # row 0 is the CLS query
    assert state.source_token == 0
    _tap(v, "D5", 0.3, 10.0)
    assert state.threshold == pytest.approx(0.3)


def test_picking_tools_act_on_the_items_alone(linked):
    """A tap or a box in A, C1 and D1 selects the images or heads, never the rings drawn over
    them (whose indices are not items)."""
    _, v = linked
    for view, layer in PICKED.items():
        tools = [t for t in v.figures[view].tools if isinstance(t, (TapTool, BoxSelectTool))]
        assert tools, view
        for tool in tools:
            assert tool.renderers == [r for r in v.figures[view].renderers
                                      if r.data_source is v.marks[layer].source(v.figures[view])], view


def test_the_prototype_click_stream_is_attached_to_its_plot(linked):
    """A stream HoloViews does not attach to a plot never fires in the browser."""
    _, v = linked
    plot = hv.renderer("bokeh").get_plot(v.plots["D1 prototypes"])
    stream = v.streams["D1 prototypes"]
    attached = [cb for p in [plot, *(getattr(plot, "subplots", None) or {}).values()] for cb in p.callbacks
                if stream in cb.streams]
    assert attached


def test_served_figures_follow_the_state(linked, data):
    """The Bokeh figures the server holds follow the state: titles name the new head and image,
    every title is shown above its figure (not on its canvas)."""
    state, v = linked
    renderer = hv.renderer("bokeh")
    figures = {**v.figures, **{name: renderer.get_plot(view).state for name, view in v.plots.items()}}

    def shown_titles_follow():
        # Every view's title is shown above its figure (explorer.titles), not on its canvas.
        for name, figure in figures.items():
            assert figure.title.text and v.titles[name].text == figure.title.text, name
            assert not figure.title.visible, name
            assert v.titles[name].div.width == figure.width, name

    shown_titles_follow()
    target = data.num_heads_total - 1
    assert data.head_label(target) not in figures["C2"].title.text
    state.select_head(target)
    for name in ("C2", "D4", "B1"):
        assert data.head_label(target) in figures[name].title.text, name
    state.select_image(5)
    assert f"image {data.ids[5]}" in figures["C2"].title.text
    assert data.ids[5] in figures["A"].title.text
    shown_titles_follow()


def test_sessions_have_their_own_state(runs):
    one, two = build_app(runs, "demo"), build_app(runs, "demo")
    assert one.state is not two.state
    before = two.state.head
    one.state.select_head((before + 1) % one.state.data.num_heads_total)
    assert two.state.head == before
    assert one.state.data is two.state.data  # the run's arrays are shared read-only


def test_run_picker_lists_only_the_runs_directory(runs, tmp_path):
    app = ExplorerApp(runs, "demo")
    assert app.picker.options == ["demo"]
    app.open("../../etc")
    assert "No run named" in app.main[0].object
    assert app.state is None or app.state.data.name == "demo"


def test_a_broken_run_is_named_in_the_page(runs, tmp_path):
    """A truncated `.npy`, or one of another shape than the manifest implies, is refused when
    the run opens, naming the file; the page says so under the picker that names that run."""
    import shutil

    broken = tmp_path / "runs"
    for name in ("truncated", "reshaped"):
        shutil.copytree(runs / "demo", broken / name)
    truncated = broken / "truncated" / "strength" / "entropy.npy"
    truncated.write_bytes(truncated.read_bytes()[:-100])
    reshaped = broken / "reshaped" / "strength" / "entropy.npy"
    np.save(reshaped, np.load(reshaped)[..., :-1])
    with pytest.raises(store.RunError, match=r"truncated/strength/entropy\.npy is truncated or corrupt"):
        store.open_run(broken / "truncated")
    app = ExplorerApp(broken, "truncated")
    assert app.picker.value == "truncated" and app.views is None
    assert "strength/entropy.npy is truncated or corrupt" in app.main[0].object
    app.picker.value = "reshaped"
    n, layers, heads = np.load(runs / "demo" / "strength" / "entropy.npy").shape
    assert f"reshaped/strength/entropy.npy has shape [{n}, {layers}, {heads - 1}]" in app.main[0].object
    assert f"[N={n}, L={layers}, H={heads}]" in app.main[0].object


def test_live_attention_matches_the_stored_attention(data, runs):
    from explorer import live

    kept = sorted(data.kept)[0]
    stored = data.run.attention(kept)
    computed = live.attention(str(data.path), kept)
    np.testing.assert_allclose(computed, stored, atol=2e-5)
    not_kept = next(i for i in range(data.num_images) if i not in data.kept)
    attention, source = data.attention(not_kept)
    assert source == "computed live" and attention.shape == stored.shape
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-4)


def test_modes_missing_from_the_store_are_computed_live(runs, arrays):
    data = RunData(runs / "demo")  # a private copy: its modes are edited below
    data.modes = tuple(m for m in data.modes if m != "cls")
    heads = [0, data.num_heads_total - 1]
    live_values = data.mode_values("probability", "image", 1, heads)["cls"]
    stored = arrays["importance"]["prob"][list(arrays["importance"]["modes"]).index("cls")]
    expected = stored.reshape(-1, stored.shape[-1])[heads, 1]
    np.testing.assert_allclose(live_values, expected, atol=1e-4)
    assert np.isnan(data.mode_values("probability", "run", 1, heads)["cls"]).all()
    top5 = data.top5(1, heads[1], "cls")
    assert top5["source"] == "computed live"
    assert top5["probs"][0] == pytest.approx(float(
        arrays["importance"]["top5_probs"][list(arrays["importance"]["modes"]).index("cls"),
                                           data.depth - 1, data.num_heads - 1, 1, 0]), abs=1e-4)


def test_missing_demo_run_opens_the_first_run_and_computes_the_full_one(tmp_path):
    """A runs directory without the demo run (a fresh install): the app opens the shipped first
    run at once, runs the full demo sweep (the same one as `vit-va sweep`, shrunk here) in the
    background with its stages reported, then offers the full run, which a later app opens."""
    from tests.explorer_runs import small_options
    from vit_jax_va.demo import first_run

    app = ExplorerApp(tmp_path, "demo", demo_images=8, demo_options=small_options())
    assert app.job is not None and app.job.error is None, app.job and app.job.lines
    assert {"analyse", "patterns"} <= set(app.job.stages_seen)
    # Shown meanwhile: the first run, the picker in step with the page.
    assert app.state.data.name == first_run.NAME == app.picker.value
    assert app.state.data.num_images == first_run.IMAGES
    assert app.picker.options == ["demo", first_run.NAME]
    button = next(o for o in app.banner.select(pn.widgets.Button))
    assert button.visible
    button.clicks += 1  # "Open the full demo run"
    assert app.state.data.name == "demo" == app.picker.value and app.state.data.num_images == 8
    assert len(app.banner) == 0
    assert ExplorerApp(tmp_path, "demo").state.data.num_images == 8  # a later start

    # The run now looks like one of an earlier demo model: a new app moves it aside, keeps it
    # openable under its hash, and computes a run of the shipped model in its place.
    manifest_path = tmp_path / "demo" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["model"]["weights_sha256"] = "0123abcd" + "0" * 56
    manifest_path.write_text(json.dumps(manifest))
    again = ExplorerApp(tmp_path, "demo", demo_images=8, demo_options=small_options())
    assert again.job is not app.job and again.job.error is None, again.job.lines
    assert again.picker.options == ["demo", "demo-0123abcd", first_run.NAME]
    next(o for o in again.banner.select(pn.widgets.Button)).clicks += 1
    retired = json.loads((tmp_path / "demo-0123abcd" / "manifest.json").read_text())
    assert retired == manifest
    assert again.state.data.run.manifest["model"]["weights_sha256"] == demo_training_record()[
        "weights_sha256"]


def test_vit_va_explore_serves_a_run(runs):
    """`vit-va explore RUN_DIR` serves the page on localhost (fetched over HTTP; the browser
    test drives the page itself)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.explorer_runs import REPO

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "vit_jax_va.cli", "explore", str(runs / "demo"),
                                "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                page = urllib.request.urlopen(f"http://localhost:{port}/", timeout=30).read().decode()
                break
            except OSError:
                assert process.poll() is None, process.stdout.read()
                assert time.monotonic() < deadline, "vit-va explore did not start"
                time.sleep(0.5)
        assert "vit-jax-va explorer" in page
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_axes_follow_the_data_of_the_new_selection(linked, data):
    """Axis and colour ranges are recomputed for every selection, so a line or bar whose values
    moved out of the first selection's range is still on screen."""
    state, v = linked
    figures = v.figures

    def covered(figure, values):
        y = figure.y_range
        return y.start <= float(np.nanmin(values)) + 1e-9 and y.end >= float(np.nanmax(values)) - 1e-9

    # The image whose B1 line lies furthest from the first image's, and the head whose profile
    # peaks highest above the first head's.
    lines = np.stack([data.head_values("probability", "image", i).values.reshape(-1)
                      for i in range(data.num_images)])
    image = int(np.argmax(np.abs(lines - lines[state.image]).max(axis=1)))
    peaks = data.strength["profile"][state.image].reshape(data.num_heads_total, -1).max(axis=1)
    head = int(np.argmax(peaks))
    state.select_head(int(np.argmin(peaks)))
    state.select_image(image)
    assert covered(figures["B1"], lines[image])
    state.select_head(head)
    assert covered(figures["C2"], data.hop_profiles(image, [head])[0])
    cells = data.head_values("probability", "image", image).values
    mapper = v.marks["B1 heat map"].colour_mapper(figures["B1 heat map"])
    assert mapper.low <= cells.min() + 1e-9 and mapper.high >= cells.max() - 1e-9


def test_marks_follow_the_selection_in_the_served_figures(linked, data):
    """The marks layers are drawn straight into the Bokeh figures the server holds: a selection
    rewrites their data and the titles; an image change rewrites C1's dots in place, in the
    source its tools pick from."""
    state, v = linked
    figures = v.figures
    H = data.num_heads
    a, b = 1, data.num_heads_total - 2
    state.select_heads([a, b])
    values = lambda metric: data.head_values(metric, state.scope, state.image).values.reshape(-1)  # noqa: E731
    b1 = v.marks["B1"].source(figures["B1"])
    np.testing.assert_allclose(b1.data["x"], [a, b])
    np.testing.assert_allclose(b1.data["y"], values("probability")[[a, b]])
    assert list(b1.data["ring"]) == [views.HIGHLIGHT, views.SECONDARY]
    assert figures["B1"].title.text.endswith(f" · {data.head_label(a)}")
    heat = v.marks["B1 heat map boxes"].source(figures["B1 heat map"])
    np.testing.assert_allclose(heat.data["x0"], np.array([a, b]) % H - 0.5)
    np.testing.assert_allclose(heat.data["y0"], np.array([a, b]) // H - 0.5)
    # A metric change redraws B1's dots, rings, y range and y label.
    state.metric = "kl"
    np.testing.assert_allclose(b1.data["y"], values("kl")[[a, b]])
    np.testing.assert_allclose(v.marks["B1 values"].source(figures["B1"]).data["y"], values("kl"))
    assert figures["B1"].title.text.startswith("B1 · kl") and data.head_label(a) in figures["B1"].title.text
    assert figures["B1"].yaxis[0].axis_label == "kl"
    y = figures["B1"].y_range
    assert y.start <= np.nanmin(values("kl")) and y.end >= np.nanmax(values("kl"))

    c1 = v.marks["C1"].source(figures["C1"])
    dots = v.marks["C1 values"].source(figures["C1"])
    state.select_image(5)
    entropy = data.entropy_per_head("image", 5).reshape(-1)
    assert sum(getattr(r, "data_source", None) is c1 for r in figures["C1"].renderers) == 1
    np.testing.assert_allclose(c1.data["y"], entropy[[a, b]], rtol=1e-6)
    np.testing.assert_allclose(dots.data["y"], entropy, rtol=1e-6)
    assert data.ids[5] in figures["C1"].title.text

    # D3's links are a marks layer: every weight at or above the threshold, up to MAX_LINKS.
    state.select_image(sorted(data.kept)[0])
    state.links = "all"
    matrix = np.asarray(data.attention(state.image)[0][state.layer, state.head_in_layer])
    links = v.marks["D3"].source(figures["D3"]).data
    assert len(links["x0"]) == min(views.MAX_LINKS, int((matrix >= state.threshold).sum())) > 0
    np.testing.assert_allclose(links["weight"], matrix[links["x0"].astype(int), links["x1"].astype(int)])
    assert data.head_label(a) in figures["D3"].title.text


def test_d1_density_counts_the_items_of_the_part_shown(linked, data):
    """D1's density is the count of (image, head) items per bin (against np.histogram2d over the
    same bins), over the whole map at first and, after a zoom, over the part shown, at the same
    resolution; the other pattern space keeps its own view."""
    state, v = linked
    figure = v.figures["D1"]
    source = v.marks["D1 density"].source(figure)
    xy = np.asarray(data.patterns["patch"]["xy"], np.float64)

    def shown_counts():
        image = np.asarray(source.data["image"][0])
        x0, y0 = source.data["x"][0], source.data["y"][0]
        x1, y1 = x0 + source.data["dw"][0], y0 + source.data["dh"][0]
        counts = np.where(np.isfinite(image), np.expm1(np.nan_to_num(image)), 0.0)
        rows, cols = image.shape
        expected = np.histogram2d(xy[:, 0], xy[:, 1], bins=(cols, rows), range=[[x0, x1], [y0, y1]])[0].T
        return counts, expected, (x0, x1, y0, y1)

    counts, expected, (x0, x1, y0, y1) = shown_counts()
    np.testing.assert_allclose(counts, expected, atol=1e-6)
    assert counts.sum() == len(xy)  # the whole map: every item
    assert (figure.x_range.start, figure.x_range.end) == pytest.approx((x0, x1))
    whole = counts.shape
    # Zoom into the middle quarter: the same number of bins, over that part alone.
    cx, cy, wx, wy = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 4, (y1 - y0) / 4
    figure._trigger_event(RangesUpdate(figure, x0=cx - wx, x1=cx + wx, y0=cy - wy, y1=cy + wy))
    counts, expected, shown = shown_counts()
    assert shown == pytest.approx((cx - wx, cx + wx, cy - wy, cy + wy))
    assert counts.shape == whole
    np.testing.assert_allclose(counts, expected, atol=1e-6)
    assert 0 < counts.sum() < len(xy)
    state.space = "cls"
    xy = np.asarray(data.patterns["cls"]["xy"], np.float64)
    counts, expected, _ = shown_counts()
    assert counts.sum() == len(xy)
    np.testing.assert_allclose(counts, expected, atol=1e-6)
