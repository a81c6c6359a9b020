"""`vit-va`: the command line.

    vit-va convert SOURCE OUT [--model-name NAME] [--num-classes K] [--img-size S] [--overwrite]

Subcommands that need torch/timm (convert) import the `converters` package only when run, so
the rest of the CLI works on the core install.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence


def _convert(args: argparse.Namespace) -> int:
    try:
        import converters
    except ImportError as err:
        print(f"vit-va convert needs torch and timm: pip install 'vit-jax-va[timm]' ({err})",
              file=sys.stderr)
        return 2
    import vit_jax_va

    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.img_size is not None:
        kwargs["img_size"] = args.img_size
    start = time.perf_counter()
    model = converters.from_timm(args.source, model_name=args.model_name, **kwargs)
    path = vit_jax_va.save(model, args.out, overwrite=args.overwrite)
    c = model.config
    print(f"converted {args.source} -> {path} ({time.perf_counter() - start:.1f} s)")
    print(f"  {c.depth} layers x {c.num_heads} heads, width {c.width}, "
          f"{c.image_size[0]}x{c.image_size[1]} px, patch {c.patch_size[0]}x{c.patch_size[1]}, "
          f"grid {c.grid[0]}x{c.grid[1]}, {c.num_prefix_tokens} prefix token(s), "
          f"{c.num_classes} classes, pool {c.pool!r}")
    if not args.no_parity:
        timm_model = converters.create_timm_model(c, converters.to_timm(model))
        report = converters.parity_report(timm_model, vit_jax_va.load(path), num_images=2)
        print(f"  parity vs timm on {report['num_images']} random images: "
              f"logits max|diff| {report['logits_max_abs_diff']:.2e}, "
              f"attention max|diff| {report['attention_max_abs_diff']:.2e}")
        if args.json:
            print(json.dumps({"out": str(path), **report}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vit-va",
        description="Which ViT attention heads matter, how strongly patches attend to their "
                    "neighbours, and what patterns heads learn.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert a timm checkpoint into a vit_jax_va checkpoint",
        description="Convert a timm ViT (hub name, or a .safetensors/.pth/.bin file with "
                    "--model-name) into a vit_jax_va checkpoint directory (Orbax + config JSON), "
                    "then check the converted model against timm on random inputs.")
    convert.add_argument("source", help="timm model name (needs network) or checkpoint file")
    convert.add_argument("out", help="output checkpoint directory")
    convert.add_argument("--model-name", help="timm architecture of a checkpoint file, "
                                              "e.g. vit_base_patch16_224")
    convert.add_argument("--num-classes", type=int, help="classes (default: from the weights)")
    convert.add_argument("--img-size", type=int, help="input size in pixels (default: the "
                                                      "architecture's)")
    convert.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    convert.add_argument("--no-parity", action="store_true", help="skip the check against timm")
    convert.add_argument("--json", action="store_true", help="also print the parity as JSON")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        # Bad input: say what is wrong without a traceback.
        print(f"vit-va {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
