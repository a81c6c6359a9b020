"""Write a screenshot of the served explorer on a run, as the README shows it.

    python docs/make_screenshot.py RUN_DIR OUT.png     # e.g. runs/dinov2-photos docs/explorer-dinov2.png

Serves the run with `panel serve explorer` on a free localhost port (`tests/browser.py`, as the
browser test does), opens it in Debian's Chromium (Playwright) at 1800 x 2400 px, waits until the
views of the first head are drawn and saves the whole page. Needs the `[dev]` extra and
`/usr/bin/chromium`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.browser import CHROMIUM, CHROMIUM_ARGS, open_page, serve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory (a sweep's --out)")
    parser.add_argument("out", type=Path, help="the PNG file to write")
    parser.add_argument("--width", type=int, default=1800, help="the browser window's width in px")
    parser.add_argument("--height", type=int, default=2400,
                        help="its height in px (the page scrolls inside its template: the screenshot is this tall)")
    args = parser.parse_args(argv)

    import playwright.sync_api

    run = args.run.resolve()
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, serve(run.parent, run.name, Path(tmp) / "serve.log") as url:
        with playwright.sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = open_page(browser, url, errors, {"width": args.width, "height": args.height})
                page.get_by_text("D4 ·").first.wait_for(timeout=120_000)
                page.mouse.move(1, 1)  # no tooltip
                time.sleep(3.0)  # let the last views paint
                page.screenshot(path=str(args.out), full_page=True)
            finally:
                browser.close()
    print(f"wrote {args.out}" + (f"; console errors: {errors}" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
