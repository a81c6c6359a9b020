"""Every explorer view renders, for the demo run (14 x 14 grid, labelled) and for a converted
random timm ViT-Tiny (4 x 4 grid, unlabelled images), and shows what the store holds."""

import base64
import io
import math
from types import SimpleNamespace

import holoviews as hv
import numpy as np
import panel as pn
import pytest
from PIL import Image

from explorer import views
from explorer.app import build_app, load_run
from explorer.data import METRICS, PATCH_METRICS, SCOPES
from explorer.state import ExplorerState
from tests.explorer_runs import backbone_runs_dir, demo_runs_dir, timm_runs_dir
from vit_jax_va import store
from vit_jax_va.masks import PRUNE_MODES


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_runs_dir(tmp_path_factory.getbasetemp()) / "demo"


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    pytest.importorskip("timm")
    return timm_runs_dir(tmp_path_factory.getbasetemp()) / "timm-tiny"


@pytest.fixture(scope="module")
def backbone_run(tmp_path_factory):
    pytest.importorskip("timm")
    return backbone_runs_dir(tmp_path_factory.getbasetemp()) / "dinov2-tiny"


def _render_everything(run_path):
    app = build_app(run_path.parent, run_path.name)
    figures = {**app.views.figures, **{name: hv.render(obj) for name, obj in app.views.plots.items()}}
    root = pn.panel(app.main).get_root()  # the whole page of the session, B3 and sidebar included
    pn.panel(app.sidebar).get_root()
    return app, figures, root


@pytest.mark.parametrize("which", ["demo", "timm"])
def test_every_view_renders(which, request):
    run_path = request.getfixturevalue("demo" if which == "demo" else "timm_run")
    app, figures, root = _render_everything(run_path)
    data = app.state.data
    assert set(figures) == {"A", "B1", "B1 heat map", "B2", "curve", "C1", "C2", "C3", "distance",
                            "D1", "D1 prototypes", "D2", "D3", "D4", "D5"}
    head = data.head_label(app.state.head)
    for name in ("B1", "C1", "C2", "C3", "D1", "D4"):
        assert head in figures[name].title.text, name
    # Every selection-dependent view renders for another head, image, metric, scope and mode.
    state = app.state
    state.select_heads([data.num_heads_total - 1, 0])
    state.select_image(data.num_images - 1)
    for metric in data.metrics:
        for scope in SCOPES:
            state.param.update(metric=metric, scope=scope)
            assert np.isfinite(views.head_importance_values(data, state).columns["y"]).all()
            assert data.head_label(state.head) in views.head_importance_marks(data, state).title
            bars = views.partial_pruning_bars(data, state)
            assert metric in bars.title or metric in ("taylor", "confidence")
            assert bars.title.endswith(f"· {data.head_label(state.head)} +1"), bars.title  # 2 heads
            assert len(views.partial_pruning_glyphs(data, state).columns["x0"]) == 4 * len(PRUNE_MODES) + 1
    for mode in PRUNE_MODES:
        state.mode = mode
        assert "top-5" in views.top5_markdown(data, state)
    for space in state.param.space.objects:
        state.space = space
        density = views.pattern_density(data, state).columns["image"][0]
        assert np.nansum(np.expm1(density)) == pytest.approx(len(data.patterns[space]["xy"]))
        assert len(views.pattern_heads(data, state).columns["x"]) == data.num_heads_total
        assert space in views.pattern_highlight(data, state).title
        hv.render(views.prototype_strip(data, state))
    state.source_token = data.num_tokens - 1
    assert views.attention_matrix(data, state).columns["image"][0].shape == (data.num_tokens,) * 2
    assert views.image_attention(data, state).columns["image"][0].shape == data.grid
    assert views.attention_histogram(data, state).columns["count"].sum() == data.num_tokens ** 2
    for fn in (views.image_attention_outlines, views.attention_links, views.attention_threshold,
               views.hop_profile_bars, views.entropy_distribution):
        title = fn(data, state).title
        assert data.head_label(state.head) in title, title


def test_a_backbone_run_shows_the_feature_metrics_and_says_why_the_rest_is_absent(backbone_run):
    from explorer.data import CLASS_METRICS, NO_CLASSIFIER
    from explorer import live

    app, figures, root = _render_everything(backbone_run)
    data, state = app.state.data, app.state
    assert not data.has_classifier and data.probs is None
    assert data.metrics == ["feature_cos", "feature_rel_l2", "patch_cos", "patch_rel_l2", "confidence"]
    # Unlabelled images and no prediction: no class to scope by.
    assert data.scopes == ["image", "run"] and state.param.scope.objects == ["image", "run"]
    imp = {k: np.asarray(v) for k, v in store.open_run(backbone_run).arrays("importance").items()}
    head_mode = data.modes.index("head")
    # The page opens on the metric it has and the head whose pruning moves the features most.
    assert state.metric == "feature_cos"
    assert state.head == int(np.argmax(imp["feature_cos"][head_mode].mean(-1).reshape(-1)))
    for metric in ("feature_cos", "patch_rel_l2"):
        for scope in data.scopes:
            state.param.update(metric=metric, scope=scope)
            images = data.scope_images(scope, state.image)
            expected = imp[metric][head_mode][..., images].astype(np.float64).mean(-1).reshape(-1)
            np.testing.assert_allclose(views.head_importance_values(data, state).columns["y"], expected)
            bars = views.partial_pruning_bars(data, state)
            assert metric in bars.title
    # What a backbone cannot have is refused by name, and the page says why instead of a plot.
    for metric in CLASS_METRICS:
        with pytest.raises(ValueError, match="no classifier"):
            data.head_values(metric, "run", 0)
    assert NO_CLASSIFIER in views.top5_markdown(data, state)
    assert "no classifier" in NO_CLASSIFIER and "vit-va probe" in NO_CLASSIFIER
    help_text = [m.object for m in app.sidebar.select(pn.pane.Markdown) if m.name == "metric help"]
    assert help_text and NO_CLASSIFIER in str(help_text[0])
    # B2's value of a mode computed live equals the stored one (the live path of a backbone).
    live_values = live.ablation(str(backbone_run), 2, "patch")
    stored_patch = imp["patch_cos"][data.modes.index("patch")][..., 2]
    assert stored_patch.max() > 1e-4  # pruning matters in this model, or the check proves little
    np.testing.assert_allclose(live_values.patch_cos[0, ..., 0], stored_patch, rtol=1e-4, atol=1e-6)
    # The curve measures the features: its lines are the stored curves.
    curve = figures["curve"]
    drawn = sorted((np.asarray(r.data_source.data["1 - cos(features)"], np.float64) for r in curve.renderers
                    if hasattr(r, "data_source") and "1 - cos(features)" in r.data_source.data), key=np.sum)
    stored = sorted((np.asarray(data.curve[k], np.float64) for k in ("feature_cos_most", "feature_cos_least")),
                    key=np.sum)
    assert len(drawn) == 2
    np.testing.assert_allclose(drawn, stored, rtol=1e-6)
    assert "feature_cos" in curve.xaxis[0].axis_label
    # A: grey, opaque dots for unlabelled images; the titles name the image alone.
    points = views.image_points(data, state).columns
    assert set(points["cls"]) == {"(none)"} and (points["alpha"] == 0.8).all()
    assert data.image_name(0) == f"image {data.ids[0]}"


def test_timm_run_has_its_own_grid_and_no_labels(timm_run):
    data = load_run(timm_run)
    # No class token (attention pooling): patches alone, and no CLS pattern space to toggle to.
    assert data.grid == (4, 4) and data.num_tokens == 16 and data.num_prefix == 0
    assert (data.labels == -1).all()
    state = ExplorerState(data)
    assert state.param.space.objects == ["patch"]
    assert data.token_name(0) == "patch (0, 0)"
    # The class scope falls back to the predicted class of unlabelled images.
    members = data.scope_images("class", 0)
    assert (data.prediction[members] == data.prediction[0]).all()
    state.scope = "class"
    assert "class" in views.head_importance_marks(data, state).title
    weights = views.image_attention(data, state).columns["image"][0]
    assert weights.shape == (4, 4)


@pytest.fixture(scope="module")
def data(demo):
    return load_run(demo)


@pytest.fixture(scope="module")
def raw(demo):
    run = store.open_run(demo)
    return {g: {k: np.asarray(v) for k, v in run.arrays(g).items()}
            for g in ("images", "importance", "strength", "patterns/patch", "curve")}


@pytest.mark.parametrize("metric", [m for m in METRICS if m not in PATCH_METRICS])  # the demo run has none
@pytest.mark.parametrize("scope", list(SCOPES))
def test_b1_shows_the_stored_metric(data, raw, metric, scope):
    imp, images = raw["importance"], raw["images"]
    image = 2
    head = list(imp["modes"]).index("head")
    klass = images["labels"][image]
    members = {"image": [image], "run": slice(None),
               "class": np.flatnonzero(images["labels"] == klass)}[scope]
    expected = {
        "probability": lambda: imp["prob"][head][..., members].mean(-1),
        "correct": lambda: imp["correct"][head][..., members].mean(-1),
        "loss": lambda: (imp["loss"][head] - imp["baseline_loss"])[..., members].mean(-1),
        "kl": lambda: imp["kl"][head][..., members].mean(-1),
        "feature_cos": lambda: imp["feature_cos"][head][..., members].mean(-1),
        "feature_rel_l2": lambda: imp["feature_rel_l2"][head][..., members].mean(-1),
        "taylor": lambda: imp["taylor"][..., members].mean(-1),
        "confidence": lambda: raw["strength"]["confidence"][members].mean(0),
    }[metric]().reshape(-1)
    state = ExplorerState(data, image=image, metric=metric, scope=scope)
    dots = views.head_importance_values(data, state).columns
    np.testing.assert_allclose(dots["y"], expected, rtol=1e-5, atol=1e-7)
    line = views.head_importance_line(data, state).columns  # the unpruned value, then the line
    np.testing.assert_allclose(line["y0"][1:], expected[:-1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(line["y1"][1:], expected[1:], rtol=1e-5, atol=1e-7)
    heat = views.head_importance_cells(data, state).columns["image"][0]
    # Bokeh draws row 0 at the bottom of the box; the frame's y axis is inverted: layer 0 on top.
    np.testing.assert_allclose(heat.reshape(-1), expected, rtol=1e-5, atol=1e-7)


def test_b2_bars_and_glyphs(data, raw):
    imp = raw["importance"]
    state = ExplorerState(data, image=1, head=3, heads=[3])
    bars = views.partial_pruning_bars(data, state)
    glyphs = views.partial_pruning_glyphs(data, state).columns
    layer, head = divmod(3, data.num_heads)
    expected = [imp["prob"][list(imp["modes"]).index(m), layer, head, 1] for m in PRUNE_MODES]
    tops = bars.columns["y1"]
    bottoms = bars.columns["y0"]
    np.testing.assert_allclose(np.where(tops > 0, tops, bottoms), expected, rtol=1e-6)
    # Glyph blocks per mode: (CLS->CLS, CLS->patch, patch->CLS, patch->patch) zeroed, as the
    # modes are defined in METHOD.md section 1 (B2).
    zeroed = {"none": (0, 0, 0, 0), "head": (1, 1, 1, 1), "cls": (1, 1, 1, 0),
              "patch": (0, 0, 0, 1), "cross": (0, 1, 1, 0), "cls_cls": (1, 0, 0, 0)}
    fills = glyphs["fill"]
    for m, mode in enumerate(PRUNE_MODES):
        got = tuple(int(f != "#ffffff") for f in fills[4 * m: 4 * m + 4])
        assert got == zeroed[mode], mode
    # Last, the one red frame: around the mode B3 shows.
    assert len(fills) == 4 * len(PRUNE_MODES) + 1 and glyphs["ring"][-1] == views.HIGHLIGHT
    assert abs(glyphs["x0"][-1] - (PRUNE_MODES.index("head") - 0.42)) < 1e-9


def test_d_views_show_the_heads_attention(data):
    kept = sorted(data.kept)[0]
    state = ExplorerState(data, image=kept, head=data.num_heads + 1, heads=[data.num_heads + 1])
    attention = data.run.attention(kept)[1, 1]
    matrix = views.attention_matrix(data, state).columns["image"][0]  # row 0 (CLS) on top: inverted axis
    np.testing.assert_allclose(matrix, attention, rtol=1e-6)
    state.threshold = float(np.quantile(attention, 0.9))
    state.links = "all"
    links = views.attention_links(data, state).columns
    assert len(links["x0"]) == min(views.MAX_LINKS, int((attention >= state.threshold).sum()))
    assert (links["weight"] >= state.threshold).all()
    np.testing.assert_allclose(links["weight"], attention[links["x0"].astype(int), links["x1"].astype(int)])
    cls_link = (links["x0"] < data.num_prefix) | (links["x1"] < data.num_prefix)
    chosen = links["x0"] == state.source_token
    colours = links["colour"]
    assert (colours[cls_link & ~chosen] == views.CLS_COLOUR).all()
    assert (colours[~cls_link & ~chosen] == views.PATCH_COLOUR).all()
    hist = views.attention_histogram(data, state)
    assert hist.columns["count"].sum() == attention.size
    state.source_token = data.num_prefix + 5
    d2 = views.image_attention(data, state).columns["image"][0][::-1]  # drawn bottom row first
    rows, cols = data.grid
    np.testing.assert_allclose(d2, attention[data.num_prefix + 5, data.num_prefix:].reshape(rows, cols))
    picture = views.image_picture(data, state).columns["image"][0]
    thumb = np.asarray(data.thumbnails[state.image])
    assert picture.shape == thumb.shape[:2] and picture.dtype == np.uint32
    red = picture[::-1].view(np.uint8).reshape(*thumb.shape[:2], 4)[..., 0]  # RGBA bytes, top row first
    np.testing.assert_array_equal(red, thumb[..., 0])
    targets = int((attention[data.num_prefix + 5, data.num_prefix:] >= state.threshold).sum())
    assert len(views.image_attention_outlines(data, state).columns["x0"]) == targets + 1  # and the source


def test_d3_draws_the_source_tokens_links_and_its_strongest_targets(data):
    kept = sorted(data.kept)[0]
    head = data.num_heads + 1
    state = ExplorerState(data, image=kept, head=head, heads=[head])
    assert state.links == "source"  # what a new session shows: links that can be followed
    attention = data.run.attention(kept)[1, 1]
    # The threshold of a new session, and one that no weight reaches: the strongest targets alone.
    for token, threshold in ((0, state.threshold), (data.num_prefix + 3, state.threshold), (0, 1.0)):
        state.source_token, state.threshold = token, threshold
        row = attention[token]
        # A naive loop: every target at or above the threshold, and the strongest few.
        ranked = sorted(range(len(row)), key=lambda t: -row[t])
        expected = {t for t in range(len(row)) if row[t] >= state.threshold} | set(ranked[:views.SOURCE_TARGETS])
        links = views.attention_links(data, state)
        cols = links.columns
        assert (cols["x0"] == token).all()
        assert set(cols["x1"].astype(int)) == expected and len(cols["x1"]) == len(expected)
        np.testing.assert_allclose(cols["weight"], row[cols["x1"].astype(int)], rtol=1e-6)
        assert f"{len(expected)} links of {data.token_name(token)}" in links.title
    assert len(cols["x1"]) == views.SOURCE_TARGETS
    # Every link above the threshold is the other choice, and far more links.
    state.links, state.threshold = "all", 2.0 / data.num_tokens
    assert len(views.attention_links(data, state).columns["x0"]) > len(expected)


def test_d1_density_counts_every_item_once(data, raw):
    xy = raw["patterns/patch"]["xy"]
    counts, (x0, y0, x1, y1) = data.density("patch", (30, 20))
    assert counts.shape == (20, 30) and counts.sum() == len(xy)
    # Against numpy's 2-D histogram over the same bins (rows: y, bottom first).
    expected = np.histogram2d(xy[:, 0], xy[:, 1], bins=(30, 20), range=[[x0, x1], [y0, y1]])[0].T
    np.testing.assert_array_equal(counts, expected)
    with pytest.raises(ValueError, match="empty part of the map"):
        data.density("patch", (30, 20), (1.0, 1.0, 0.0, 2.0))
    heads = views.pattern_heads(data, ExplorerState(data))
    np.testing.assert_allclose(heads.columns["x"], raw["patterns/patch"]["head_xy"][:, 0])


def test_c_views(data, raw):
    state = ExplorerState(data, image=4, head=2, heads=[2, 5])
    entropy = raw["strength"]["entropy"]
    dots = views.entropy_points(data, state)
    np.testing.assert_allclose(dots.columns["y"], entropy[4].reshape(-1), rtol=1e-6)
    ceiling = views.entropy_ceiling(data).columns["y0"][0]
    assert ceiling == pytest.approx(math.log(data.grid[0]))  # ln(rings) for a square grid
    c3 = views.entropy_distribution(data, state)
    assert c3.columns["count"].sum() == data.num_images
    # The second selected head's distribution (a line of 40 bins: 39 segments) and the image.
    lines = views.entropy_of_image(data, state).columns
    assert len(lines["x0"]) == 39 + 1 and lines["colour"][-1] == views.HIGHLIGHT
    assert lines["x0"][-1] == pytest.approx(float(entropy[4, 0, 2]))


def test_image_overview_points_and_thumbnails(data, raw):
    points = views.image_points(data)
    images = raw["images"]
    np.testing.assert_allclose(points.columns["x"], images["overview_xy"][:, 0])
    p_true = images["probs"][np.arange(len(images["labels"])), images["labels"]]
    np.testing.assert_allclose(points.columns["p_true"], p_true, rtol=1e-6)
    uri = points.columns["thumb"][3]
    assert uri.startswith("data:image/png;base64,")
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    np.testing.assert_array_equal(picture, images["thumbnails"][3].squeeze(-1)
                                  if images["thumbnails"].shape[-1] == 1 else images["thumbnails"][3])
    assert data.find_image(str(images["ids"][6])) == 6
    assert data.find_image("no such id") is None


def test_pruning_curve_view_draws_the_stored_curves_with_the_legend_off_the_lines(data, raw):
    curve = raw["curve"]
    figure = hv.render(views.pruning_curve(data))
    drawn = sorted(tuple(r.data_source.data["accuracy"]) for r in figure.renderers)
    assert drawn == sorted([tuple(curve["accuracy_most"]), tuple(curve["accuracy_least"])])
    # The measured images are disjoint from the ranking images, and the title says so.
    assert not np.isin(curve["images"], curve["ranking_images"]).any()
    assert f"{len(curve['images'])} held-out images" in figure.title.text
    # The legend is laid out under the axes, not over the lines.
    assert [type(item).__name__ for item in figure.below].count("Legend") == 1
    assert not any(type(item).__name__ == "Legend" for item in figure.center)
    # A store from before the held-out split (no ranking images) is not called held out.
    older = {k: v for k, v in curve.items() if k != "ranking_images"}
    title = hv.render(views.pruning_curve(SimpleNamespace(curve=older))).title.text
    assert f"{len(curve['images'])} images" in title and "held-out" not in title


def test_titles_shorten_long_image_ids_and_class_names(demo, monkeypatch):
    """Bokeh clips a title at the figure's edge: a long id keeps its end (the file name), a long
    class name its start, in every title that names them; the sidebar keeps the full names."""
    from explorer import data as explorer_data

    data = load_run(demo)  # its own copy: the names below are changed
    long_id = "holidays/2019/beach/IMG_20190612_141516.jpg"
    long_class = "great white shark, white shark, man-eater"
    monkeypatch.setattr(data, "ids", [long_id, *data.ids[1:]])
    monkeypatch.setattr(data, "class_names", [long_class, *data.class_names[1:]])
    state = ExplorerState(data)
    state.select_image(0)
    id_tail = long_id[-(explorer_data.TITLE_ID_CHARS - 1):]
    for title in (views.hop_profile_bars(data, state).title, views.attention_matrix(data, state).title,
                  views.entropy_highlight(data, state).title, views.image_marker(data, state).title):
        assert f"image …{id_tail}" in title and long_id not in title, title
    assert data.image_label(0) == f"image …{id_tail}"
    assert len(data.image_label(0)) == len("image ") + explorer_data.TITLE_ID_CHARS
    labelled = [i for i in range(data.num_images) if data.labels[i] == 0]
    assert labelled, "the demo run has images of class 0"
    state.select_image(labelled[0])
    state.scope = "class"
    title = views.entropy_highlight(data, state).title
    assert f"class {long_class[:explorer_data.TITLE_CLASS_CHARS - 1]}… (" in title, title
    assert data.class_label(0) == long_class[:explorer_data.TITLE_CLASS_CHARS - 1] + "…"
    assert long_id in data.image_name(0) and long_class in data.image_name(labelled[0])


def test_a_figure_title_is_shown_as_html_that_follows_it():
    """`FigureTitle` shows a figure's title (escaped) in its HTML pane instead of on the canvas,
    and follows every later change of the title, as the marks layers make them."""
    from explorer.titles import TITLE_CLASS, FigureTitle

    title = FigureTitle()
    figure = hv.renderer("bokeh").get_plot(hv.Curve([]).opts(title="C2 · <b>a</b> & b", width=333,
                                                             hooks=[title.hook])).state
    assert not figure.title.visible and title.div.width == 333
    assert title.text == "C2 · <b>a</b> & b"
    assert f'class="{TITLE_CLASS}"' in title.div.text and "&lt;b&gt;a&lt;/b&gt; &amp; b" in title.div.text
    figure.title.text = "C2 · L1H2"
    assert title.text == "C2 · L1H2" and "C2 · L1H2<" in title.div.text
