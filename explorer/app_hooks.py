"""Server hooks of `panel serve explorer` (Bokeh's directory apps run `on_server_loaded` once
the server is up).

`panel serve` listens on every network interface unless it is given `--address`: anyone who can
reach the machine could then browse the runs, start live model computations and make the
server import any installed module (through Panel's `/components/` route). So the explorer
refuses to be served that way, before any request is answered, and says how to serve it:
`--address 127.0.0.1` for this machine only (what `vit-va explore` does), or an explicit
address with authentication for a lab (README, "Serving a lab").
"""

from __future__ import annotations

import argparse
import os
import sys

REFUSAL = ("panel serve explorer: refusing to listen on every network interface (no --address "
           "given): anyone on the network could use this explorer. Add --address 127.0.0.1 to "
           "serve this machine only (or run `vit-va explore`), or give the address to serve a lab "
           "on together with --basic-auth or OAuth (README: Serving a lab).")


def served_address(argv: list[str]) -> str | None:
    """The `--address` of a `panel serve` command line (None: not given, every interface)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--address")
    return parser.parse_known_args(argv)[0].address


def on_server_loaded(server_context) -> None:
    if served_address(sys.argv[1:]) is None:
        print(REFUSAL, file=sys.stderr, flush=True)
        os._exit(2)  # from inside the server's event loop: a SystemExit would only be logged
