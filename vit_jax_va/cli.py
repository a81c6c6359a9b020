"""`vit-va`: the command line.

    vit-va convert SOURCE OUT [--model-name NAME] [--num-classes K] [--img-size S] [--overwrite]
    vit-va train-demo OUT [--data-dir DIR] [--epochs N] [--seed S] [--overwrite] ...

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


def _train_demo(args: argparse.Namespace) -> int:
    from vit_jax_va.train import TrainSettings, train_demo

    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size,
                             learning_rate=args.lr, weight_decay=args.weight_decay,
                             warmup_epochs=args.warmup_epochs,
                             label_smoothing=args.label_smoothing, flip=not args.no_flip,
                             crop_padding=args.crop_padding, patch_keep=args.patch_keep,
                             full_token_epochs=args.full_token_epochs, seed=args.seed)
    train_demo(args.out, data_dir=args.data_dir, settings=settings, overwrite=args.overwrite,
               init_from=args.init_from, command=" ".join(["vit-va", *args.argv]), log=lambda line: print(line, flush=True))
    return 0


def resolve_model(spec: str, model_name: str | None = None):
    """'demo', a vit_jax_va checkpoint directory, or a timm name/file (converted on the fly)."""
    from pathlib import Path

    import vit_jax_va

    if spec == "demo":
        from vit_jax_va.demo import load_demo_model

        return load_demo_model()
    path = Path(spec)
    if path.is_dir():
        return vit_jax_va.load(path)
    try:
        import converters
    except ImportError as err:
        raise ValueError(f"--model {spec!r} is not a vit_jax_va checkpoint directory; converting "
                         f"a timm model needs pip install 'vit-jax-va[timm]' ({err})") from None
    return converters.from_timm(spec, model_name=model_name)


def resolve_data(spec: str):
    """'demo', a folder of images (class sub-folders or flat), a folder of MNIST-style IDX
    files (the test split is used), a text file listing image paths, or one image file."""
    from pathlib import Path

    from vit_jax_va import data

    if spec == "demo":
        from vit_jax_va.demo import load_demo_images

        return load_demo_images()
    path = Path(spec)
    if path.is_dir():
        if any("idx" in p.name for p in path.iterdir()):
            return data.load_mnist(path, split="test")
        return data.load_image_folder(path)
    if path.is_file() and path.suffix == ".txt":
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return data.load_image_files([path.parent / line for line in lines])
    if path.is_file():
        return data.load_image_files([path])
    raise FileNotFoundError(f"--data {spec!r}: no such folder or file")


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vit_jax_va.sweep import Sweep, SweepOptions, usable_images

    out = args.out
    if out is None:
        if args.model == "demo" and args.data == "demo":
            out = Path(args.runs_dir) / "demo"
        else:
            out = Path(args.runs_dir) / f"{Path(args.model).stem}-{Path(args.data).stem}"
    options = SweepOptions(**{k: v for k, v in dict(
        modes=tuple(args.modes) if args.modes else None, batch_size=args.batch_size,
        chunk_size=args.chunk_size, keep_attention=args.keep_attention,
        pattern_images=args.pattern_images, projection=args.projection,
        precision=args.precision, seed=args.seed).items() if v is not None})
    if args.distributed:
        import jax

        jax.distributed.initialize()
    model = resolve_model(args.model, args.model_name)
    dataset = usable_images(resolve_data(args.data), args.images)
    Sweep(model, dataset, out, options=options, model_source=args.model,
          progress=not args.no_progress).run()
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

    from vit_jax_va.train import TrainSettings

    default = TrainSettings()
    demo = commands.add_parser(
        "train-demo", help="train the demo ViT on Fashion-MNIST",
        description="Train the shipped demo model (28x28 greyscale, patch 2, 6 layers x 4 heads, "
                    "width 64) on the Fashion-MNIST train split and evaluate it on the test split; "
                    "writes OUT/checkpoint (with training.json) and OUT/sample.npz. The IDX files "
                    "come from `apt-get install dataset-fashion-mnist` or --data-dir.")
    demo.add_argument("out", help="output directory (the package ships vit_jax_va/demo)")
    demo.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files "
                                         "(default /usr/share/datasets/fashion-mnist)")
    demo.add_argument("--epochs", type=int, default=default.epochs)
    demo.add_argument("--batch-size", type=int, default=default.batch_size)
    demo.add_argument("--lr", type=float, default=default.learning_rate, help="peak learning rate")
    demo.add_argument("--weight-decay", type=float, default=default.weight_decay)
    demo.add_argument("--warmup-epochs", type=float, default=default.warmup_epochs)
    demo.add_argument("--label-smoothing", type=float, default=default.label_smoothing)
    demo.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    demo.add_argument("--crop-padding", type=int, default=default.crop_padding,
                      help="random-crop padding in pixels (0: no crops)")
    demo.add_argument("--patch-keep", type=float, default=default.patch_keep,
                      help="fraction of patch tokens kept per training image (PatchDropout)")
    demo.add_argument("--full-token-epochs", type=int, default=default.full_token_epochs,
                      help="final epochs trained with every token")
    demo.add_argument("--seed", type=int, default=default.seed)
    demo.add_argument("--init-from", metavar="CHECKPOINT",
                      help="continue from this checkpoint (fresh optimiser and schedule)")
    demo.add_argument("--overwrite", action="store_true", help="replace OUT/checkpoint if it exists")
    demo.set_defaults(run=_train_demo)

    sweep = commands.add_parser(
        "sweep", help="importance, strength and patterns of every head over a set of images",
        description="Prune every head alone in every partial-pruning mode, measure attention "
                    "strength and collect attention patterns for every image, train the pattern "
                    "autoencoders, and write a results store that the explorer opens. With no "
                    "arguments: the shipped demo model on the shipped images, into RUNS_DIR/demo. "
                    "Killed and started again with the same arguments, it continues where it "
                    "stopped; on a finished run it does nothing. Uses every device JAX sees.")
    sweep.add_argument("--model", default="demo",
                       help="'demo', a vit_jax_va checkpoint directory, or a timm model name "
                            "or checkpoint file (default: demo)")
    sweep.add_argument("--model-name", help="timm architecture of a --model checkpoint file")
    sweep.add_argument("--data", default="demo",
                       help="'demo', an image folder (one sub-folder per class, or flat), a "
                            "folder of MNIST-style IDX files, a .txt list of image paths, or an "
                            "image file (default: demo)")
    sweep.add_argument("--out", help="run directory (default: RUNS_DIR/demo, or "
                                     "RUNS_DIR/MODEL-DATA)")
    sweep.add_argument("--runs-dir", default="runs", help="where runs go (default: runs)")
    sweep.add_argument("--images", type=int, help="use only the first N images")
    sweep.add_argument("--batch-size", type=int, help="images per jitted call (default 16)")
    sweep.add_argument("--chunk-size", type=int, help="images per resumable chunk (default 64)")
    sweep.add_argument("--modes", nargs="+", metavar="MODE",
                       help="prune modes (default: all six: none head cls patch cross cls_cls)")
    sweep.add_argument("--keep-attention", type=int,
                       help="keep full attention of the first N images (default 4)")
    sweep.add_argument("--pattern-images", type=int,
                       help="images whose pattern items train the autoencoders (default 200)")
    sweep.add_argument("--projection", choices=("tsne", "umap", "pca"),
                       help="2-D projection of the pattern space (default tsne)")
    sweep.add_argument("--precision", choices=("highest", "high", "default"),
                       help="JAX matmul precision; 'default' is fastest on GPU/TPU (default highest)")
    sweep.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    sweep.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() first (multi-host runs)")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bars")
    sweep.set_defaults(run=_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError) as err:
        # Bad input: say what is wrong without a traceback.
        print(f"vit-va {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
