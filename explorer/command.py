"""`vit-va explore`: the explorer's subcommand of the `vit-va` command line, added through the
entry-point group `vit_jax_va.commands` (pyproject.toml), so that the core never names the
explorer. Importing this module imports no UI library; the Panel app loads when the command runs.
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
