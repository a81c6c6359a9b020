"""The served explorer and a page of it in Debian's Chromium, for the browser test and for
`docs/make_screenshot.py`: `serve(runs, run, log)` runs `panel serve explorer` on a free
localhost port; `open_page(browser, url, errors, viewport)` opens it once its four areas are
shown."""

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(runs: Path, run: str, log_path: Path):
    """`panel serve explorer` on a free localhost port, opening `runs/run`; yields its URL."""
    port = free_port()
    env = {**os.environ, "VIT_VA_RUNS": str(runs), "VIT_VA_RUN": run,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "panel", "serve", "explorer", "--port", str(port),
                                "--address", "localhost"], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            # Only that the server listens: a page request would build a whole session, which
            # can take longer than any short timeout on a busy machine.
            try:
                socket.create_connection(("localhost", port), timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"panel serve did not start; see {log.name}")
                time.sleep(0.5)
        yield f"http://localhost:{port}/explorer"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def open_page(browser, url: str, errors: list[str], viewport: dict, init_script: str | None = None):
    """A new page on `url` once the four areas are shown; console errors go to `errors`;
    `init_script` runs in the page before any of its own scripts."""
    page = browser.new_page(viewport=viewport)
    if init_script:
        page.add_init_script(init_script)
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, timeout=180_000)  # the first page builds every view
    for area in ("A · Image overview", "B · Head importance", "C · Attention strength",
                 "D · Attention patterns"):
        page.get_by_text(area).first.wait_for(timeout=120_000)
    return page
