"""`vit-va explore` and `vit-va report`: the explorer's subcommands of the `vit-va` command line,
added through the entry-point group `vit_jax_va.commands` (pyproject.toml), so that the core
never names the explorer. Importing this module imports no UI library; the Panel app loads when the command runs.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path


def add_command(commands) -> None:
    """Add `explore` to `vit-va`'s subcommands (an `argparse` subparsers action)."""
    explore = commands.add_parser(
        "explore", help="open the linked-views explorer on a run",
        description="Serve the explorer (A image overview, B head importance, C attention "
                    "strength, D attention patterns) on localhost. RUN_DIR is a run made by "
                    "`vit-va sweep`; the run picker lists the runs beside it. When RUN_DIR is "
                    "the demo run and does not exist yet, the page opens at once on the shipped "
                    "first run (the demo model on its first 64 images, swept in advance) and "
                    "computes the full demo run in the background, offering it when done.")
    explore.add_argument("run_dir", nargs="?", default="runs/demo", metavar="RUN_DIR",
                         help="run directory (default: runs/demo)")
    explore.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    explore.add_argument("--address", default="localhost",
                         help="address to listen on (default: localhost only)")
    explore.add_argument("--show", action="store_true", help="open a browser tab")
    explore.set_defaults(run=explore_run)


def explore_run(args: argparse.Namespace) -> int:
    """Serve the explorer on `args.run_dir` until interrupted."""
    from explorer.app import serve

    run = Path(args.run_dir).absolute()
    if not (run / "manifest.json").is_file() and run.name != "demo":
        raise FileNotFoundError(f"{run} is not a run (no manifest.json); make one with vit-va sweep")
    print(f"explorer on the runs in {run.parent} (opening {run.name}); Ctrl-C stops it")
    try:
        serve(run.parent, run.name, port=args.port, address=args.address, show=args.show)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise ValueError(f"port {args.port} on {args.address} is in use (another explorer?); "
                             f"choose another --port") from None
        raise
    return 0


def add_report(commands) -> None:
    """Add `report` to `vit-va`'s subcommands (an `argparse` subparsers action)."""
    report = commands.add_parser(
        "report", help="write a run's report: one HTML file that opens without a server",
        description="Write one self-contained HTML file of a run (Bokeh, Panel and the data "
                    "inside it: it opens in a browser offline, without a server): the four "
                    "areas' overviews on the most important head, and for each of the TOP most "
                    "important heads its numbers (importance, entropy, mean attention distance, "
                    "pattern cluster) and its detail views. Every view's save tool writes a PNG "
                    "(with --svg: an SVG).")
    report.add_argument("run_dir", metavar="RUN_DIR", help="run directory (made by vit-va sweep)")
    report.add_argument("--out", required=True, metavar="FILE.html", help="the HTML file to write")
    report.add_argument("--top", type=int, default=3, help="how many of the most important heads (default 3)")
    report.add_argument("--svg", action="store_true",
                        help="draw the views as SVG (their save tools write SVG, not PNG)")
    report.set_defaults(run=report_run)


def report_run(args: argparse.Namespace) -> int:
    """Write the report of `args.run_dir` to `args.out`."""
    from explorer import report

    out = report.write(args.run_dir, args.out, top=args.top, svg=args.svg)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0
