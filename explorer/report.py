"""A run's report: one self-contained HTML file (`vit-va report RUN --out report.html`) that
opens in a browser without a server, to share a run's findings.

It holds the explorer's own views, drawn for a fixed selection: the four areas' overviews
(`layout.overviews`) on the most important head, then, for each of the `top` most important
heads (`RunData.ranked_heads`), a table row of its numbers and its detail views
(`layout.detail_views`) on the run's first image. Bokeh, Panel and the run's data are written
into the file (no CDN, no server), so its views keep their hover, zoom and save tools: the save
tool of every view writes a PNG, and `--svg` draws every view as SVG, whose save tool then
writes an SVG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from explorer.data import METRICS, RunData

# The numbers of a head in the report's table (column title, how to read it).
COLUMNS = (("rank", "by the run's importance"), ("head", ""), ("importance", "the drop when pruned"),
           ("pruned", "the metric with the head pruned, mean over the run"),
           ("entropy", "of its n-hop profile, mean over images (nats)"),
           ("distance", "mean attention distance, mean over images (pixels)"),
           ("pattern", "its most frequent pattern cluster, and its share of the head's items"))


def head_numbers(data: RunData, head: int) -> dict[str, str]:
    """The numbers of `head` (flat index) that the report's table shows, as shown."""
    values = data.head_values(data.default_metric, "run", 0)
    pruned = float(values.values.reshape(-1)[head])
    # With a classifier the metric drops (baseline - pruned); a feature change rises from 0.
    importance = (values.baseline - pruned) if data.has_classifier else pruned
    layer, within = divmod(head, data.num_heads)
    numbers = {"rank": str(data.ranked_heads().index(head) + 1), "head": data.head_label(head),
               "importance": f"{importance:.4f}", "pruned": f"{pruned:.4f}",
               "entropy": f"{float(data.statistic_per_head('entropy')[layer, within]):.3f}",
               "distance": f"{float(data.statistic_per_head('mean_distance')[layer, within]):.1f}"}
    patterns = []
    for space, arrays in data.patterns.items():
        shares = np.asarray(arrays["head_shares"])[head]
        if not np.isnan(shares).any():
            patterns.append(f"{space} {int(np.argmax(shares))} ({float(np.max(shares)):.0%})")
    numbers["pattern"] = "; ".join(patterns) or "-"
    return numbers


def numbers_table(data: RunData, heads: list[int]) -> str:
    """The table of the heads' numbers (Markdown)."""
    titles = [f"{name} ({how})" if how else name for name, how in COLUMNS]
    rows = [[head_numbers(data, h)[name] for name, _ in COLUMNS] for h in heads]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [titles, ["---"] * len(COLUMNS), *rows])


def build(data: RunData, top: int = 3, svg: bool = False):
    """The report's page (a Panel layout) for `data`: the overviews and the `top` most
    important heads' numbers and detail views."""
    import panel as pn
    from bokeh.models import SaveTool

    from explorer.layout import detail_views, overviews, pattern_errors, run_summary
    from explorer.state import ExplorerState
    from explorer.wiring import ExplorerViews

    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    heads = data.ranked_heads()[:top]

    def views(head: int) -> ExplorerViews:
        v = ExplorerViews(data, ExplorerState(data, head=head, heads=[head]))
        for figure in v.figures.values():
            # A save tool on every view (in the explorer, views without a toolbar hide theirs).
            figure.add_tools(SaveTool())
            if figure.toolbar_location is None:
                figure.toolbar_location = "right"
            figure.toolbar.autohide = True
            if svg:
                figure.output_backend = "svg"
        return v

    first = views(heads[0])
    metric = METRICS[data.default_metric]
    parts = [pn.pane.Markdown(f"# vit-jax-va report: run `{data.name}`\n\n" + run_summary(data)
                              + pattern_errors(data), sizing_mode="stretch_width"),
             pn.pane.Markdown(f"## Overviews, on the most important head ({data.head_label(heads[0])}) "
                              f"and {data.image_label(0)}", sizing_mode="stretch_width"),
             overviews(first),
             pn.pane.Markdown(f"## The {len(heads)} most important heads\n\nImportance: "
                              f"`{data.default_metric}` ({metric}), over all {data.num_images} images, "
                              f"with the head pruned.\n\n" + numbers_table(data, heads),
                              sizing_mode="stretch_width", name="numbers")]
    for rank, head in enumerate(heads, 1):
        parts += [pn.pane.Markdown(f"### {rank}. {data.head_label(head)}: details on {data.image_label(0)}",
                                   sizing_mode="stretch_width"),
                  detail_views(first if head == heads[0] else views(head))]
    return pn.Column(*parts, sizing_mode="stretch_width")


def write(run: str | Path, out: str | Path, top: int = 3, svg: bool = False) -> Path:
    """Write the report of the run at `run` to `out` (an .html file, replaced only when
    complete); returns `out`."""
    import os

    import holoviews as hv
    import panel as pn
    from bokeh.resources import INLINE
    from panel.io.resources import set_resource_mode

    from explorer import views

    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"the report is an HTML file: {out} does not end in .html")
    data = RunData(run)
    pn.extension(sizing_mode="fixed", notifications=False, inline=True)
    hv.extension("bokeh", logo=False)
    views.set_defaults()
    page = build(data, top=top, svg=svg)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial.html")
    # Panel's stylesheets name its CDN unless the page is made in the inline mode.
    with set_resource_mode("inline"):
        page.save(str(partial), resources=INLINE, title=f"vit-jax-va report: {data.name}")
    partial.write_text(inline_cdn_files(partial.read_text(encoding="utf-8")), encoding="utf-8")
    os.replace(partial, out)
    return out


def inline_cdn_files(html: str) -> str:
    """`html` with every file of Panel's CDN that it names (stylesheets, icons) written into it
    as a data URL, from the copy Panel installs with itself: Panel's inline mode inlines its
    scripts, but its components' stylesheets still name the CDN, which an offline reader cannot
    reach."""
    import base64
    import mimetypes
    import re

    from panel.io.resources import CDN_DIST, DIST_DIR

    def data_url(match: re.Match) -> str:
        path = DIST_DIR / match.group(1)
        if not path.is_file():
            return match.group(0)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"

    return re.sub(re.escape(CDN_DIST) + r"([\w./-]+)(\?[\w.=&-]*)?", data_url, html)
