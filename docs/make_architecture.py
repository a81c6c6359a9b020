"""Draw docs/architecture.svg, the data flow of vit-jax-va, from the table below.

    python docs/make_architecture.py [--check] [--output PATH]

The picture is plain SVG written by this script (no plotting library), so that it can be
regenerated anywhere; `--check` exits 1 when the file differs from what the script draws
(the tests run it).
"""

from __future__ import annotations

import argparse
import sys
from html import escape
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "architecture.svg"

# The stations of the data flow, left to right: (title, where, lines).
STATIONS = (
    ("checkpoint", "converters/", ("timm model or file", "vit_jax_va checkpoint", "(Orbax + config JSON)")),
    ("model", "vit_jax_va/model.py", ("ViT: embed, blocks, classify", "Block.heads / finish:", "the one forward pass")),
    ("sweep stages", "vit_jax_va/sweep/", ("analyse: ablate_heads,", "Taylor, strength, items", "collect, curve, patterns,", "overview")),
    ("results store", "vit_jax_va/store.py", ("manifest.json, inputs.json", ".npy arrays, .npz chunks", "(numpy / pandas readable)")),
    ("explorer", "explorer/", ("Panel app: areas A-D", "reads the store; live", "model for one image")),
)
# What flows along each arrow, under it.
ARROWS = ("load / convert", "ViT + images", "arrays", "open_run")

BOX_W, BOX_H, GAP, MARGIN, TOP = 176, 118, 84, 16, 34


def render() -> str:
    width = 2 * MARGIN + len(STATIONS) * BOX_W + (len(STATIONS) - 1) * GAP
    height = TOP + BOX_H + 62
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif">',
        '<defs><marker id="arrow" markerWidth="10" markerHeight="8" refX="9" refY="4" '
        'orient="auto"><path d="M0,0 L10,4 L0,8 z" fill="#444"/></marker></defs>',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{MARGIN}" y="20" font-size="14" font-weight="bold" fill="#222">'
        'vit-jax-va: data flows one way</text>',
    ]
    for i, (title, where, lines) in enumerate(STATIONS):
        x = MARGIN + i * (BOX_W + GAP)
        parts.append(f'<rect x="{x}" y="{TOP}" width="{BOX_W}" height="{BOX_H}" rx="8" '
                     f'fill="#eef3fb" stroke="#2b5fa8" stroke-width="1.5"/>')
        parts.append(f'<text x="{x + BOX_W / 2}" y="{TOP + 20}" font-size="13" font-weight="bold" '
                     f'text-anchor="middle" fill="#1c3f73">{escape(title)}</text>')
        parts.append(f'<text x="{x + BOX_W / 2}" y="{TOP + 36}" font-size="10" '
                     f'text-anchor="middle" fill="#555" font-family="DejaVu Sans Mono, monospace">'
                     f'{escape(where)}</text>')
        for j, line in enumerate(lines):
            parts.append(f'<text x="{x + BOX_W / 2}" y="{TOP + 56 + 14 * j}" font-size="10.5" '
                         f'text-anchor="middle" fill="#222">{escape(line)}</text>')
        if i < len(ARROWS):
            x0, x1, y = x + BOX_W + 2, x + BOX_W + GAP - 3, TOP + BOX_H / 2
            parts.append(f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#444" '
                         f'stroke-width="1.5" marker-end="url(#arrow)"/>')
            parts.append(f'<text x="{(x0 + x1) / 2}" y="{y - 7}" font-size="9.5" '
                         f'text-anchor="middle" fill="#444">{escape(ARROWS[i])}</text>')
    # The explorer's live path goes back to the model for the selected image.
    model_x = MARGIN + (BOX_W + GAP) + BOX_W / 2
    explorer_x = MARGIN + 4 * (BOX_W + GAP) + BOX_W / 2
    y = TOP + BOX_H + 28
    parts.append(f'<path d="M{explorer_x},{TOP + BOX_H} L{explorer_x},{y} L{model_x},{y} '
                 f'L{model_x},{TOP + BOX_H + 4}" fill="none" stroke="#c0504d" stroke-width="1.3" '
                 f'stroke-dasharray="5,3" marker-end="url(#arrow)"/>')
    parts.append(f'<text x="{(model_x + explorer_x) / 2}" y="{y + 14}" font-size="10" '
                 f'text-anchor="middle" fill="#c0504d">live path: the same model stages for the '
                 f'selected image (explorer/live.py)</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.output.is_file() or args.output.read_text() != text:
            print(f"{args.output.name} is stale: run python docs/make_architecture.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
