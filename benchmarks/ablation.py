"""Prune every head alone: our jitted, vectorised sweep against the PyTorch loop people use.

The baseline is a timm model with a forward pre-hook on `blocks[l].attn.proj` that zeroes one
head's slice of the projection input, one forward pass (a batch of images) per head, under
`torch.inference_mode()`. Ours is `vit_jax_va.importance.ablate_heads` on the same weights
(`converters.from_timm`) and the same images. Both are warmed up; our compile time is printed
apart and left out of the timed figure.

Also printed: the largest difference between the two sets of reference-class probabilities,
the FLOP/s our sweep achieves (FLOPs counted analytically, matmuls and attention products
only) against a large float32 matmul in jax on the same machine, and where our time goes.

    python benchmarks/ablation.py [--model vit_tiny_patch16_224] [--images 16]
                                  [--batch-size 16] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import timm
import torch
from flax import nnx

import converters
from vit_jax_va import ViTConfig
from vit_jax_va.batching import variant_chunk as default_variant_chunk
from vit_jax_va.importance import ablate_heads, unpruned_pass

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


# The baseline ------------------------------------------------------------------------------

def torch_passes(timm_model, images_nchw: torch.Tensor, batch_size: int, runs
                 ) -> tuple[list[np.ndarray], list[float]]:
    """One forward pass per (layer, head) in `runs` ((None, None): unpruned), each over all
    images in batches, with a forward pre-hook on `blocks[layer].attn.proj` that zeroes the
    head's slice of the projection input. Returns logits `[N, K]` and seconds per pass."""
    head_dim = timm_model.blocks[0].attn.head_dim
    pruned = {"layer": None, "head": None}

    def zero_head(layer):
        def hook(module, args):
            if pruned["layer"] != layer:
                return None
            (x,) = args
            x = x.clone()
            h = pruned["head"]
            x[..., h * head_dim:(h + 1) * head_dim] = 0
            return (x,)
        return hook

    hooks = [block.attn.proj.register_forward_pre_hook(zero_head(layer))
             for layer, block in enumerate(timm_model.blocks)]
    out, seconds = [], []
    try:
        with torch.inference_mode():
            for layer, head in runs:
                pruned.update(layer=layer, head=head)
                start = time.perf_counter()
                out.append(torch.cat([timm_model(images_nchw[i:i + batch_size])
                                      for i in range(0, len(images_nchw), batch_size)]).numpy())
                seconds.append(time.perf_counter() - start)
    finally:
        for hook in hooks:
            hook.remove()
    return out, seconds


# FLOPs ------------------------------------------------------------------------------------

def block_flops(c: ViTConfig, queries: int, keys: int, qkv_rows: int | None = None) -> int:
    """Multiply-adds x 2 of one block for `queries` query rows attending to `keys` tokens."""
    qkv_rows = keys if qkv_rows is None else qkv_rows
    return 2 * (qkv_rows * c.width * 3 * c.width            # qkv
                + 2 * queries * keys * c.width               # q k^T and A v, all heads
                + queries * c.width * c.width                # output projection
                + 2 * queries * c.width * c.mlp_hidden)      # MLP


def sweep_flops(c: ViTConfig, num_images: int, num_modes: int = 1) -> int:
    """FLOPs `ablate_heads` executes (see vit_jax_va.importance for what it skips)."""
    t, heads, depth = c.num_tokens, c.num_heads, c.depth
    rows = 1 + int(c.distillation_token) if c.pool == "token" else t
    embed = 2 * c.num_patches * c.patch_size[0] * c.patch_size[1] * c.in_channels * c.width
    classify = 2 * c.width * c.num_classes * (1 + int(c.distillation_token))
    baseline = embed + depth * block_flops(c, t, t) + classify
    attention_part = block_flops(c, t, t) - 2 * 2 * t * c.width * c.mlp_hidden
    total = baseline
    for layer in range(depth):
        last = layer == depth - 1
        r = rows if last else t
        shared = attention_part  # the unpruned attention of the pruned layer, once per layer
        removed = 2 * r * t * c.head_dim + 2 * r * c.head_dim * c.width
        mlp = 2 * 2 * r * c.width * c.mlp_hidden
        tail = 0
        if not last:
            full = depth - 1 - layer - (1 if rows != t else 0)
            tail = full * block_flops(c, t, t)
            if rows != t:
                tail += block_flops(c, rows, t, qkv_rows=t)
        total += shared + num_modes * heads * (removed + mlp + tail + classify)
    return total * num_images


def naive_flops(c: ViTConfig, num_images: int) -> int:
    """FLOPs of the baseline: 1 + L*H full forward passes."""
    embed = 2 * c.num_patches * c.patch_size[0] * c.patch_size[1] * c.in_channels * c.width
    forward = (embed + c.depth * block_flops(c, c.num_tokens, c.num_tokens)
               + 2 * c.width * c.num_classes)
    return (1 + c.depth * c.num_heads) * forward * num_images


def matmul_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    product = jax.jit(lambda a, b: a @ b)
    product(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# Where the time goes ---------------------------------------------------------------------

def _best_time(fn, *args, repeats: int = 3) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def stage_times(model, images: np.ndarray, variant_chunk: int) -> dict[str, float]:
    """Seconds of the sweep's stages, each timed alone on the shapes the sweep uses, and
    scaled by how often the sweep runs it for these images ("head" mode)."""
    c = model.config
    graphdef, state = nnx.split(model)
    b = images.shape[0]
    rows = model.classifier_rows
    labels = jnp.full((b,), -1, jnp.int32)

    @jax.jit
    def baseline(state, images):
        return unpruned_pass(nnx.merge(graphdef, state), images, labels)

    x_chunk = jnp.asarray(np.random.default_rng(0).standard_normal(
        (variant_chunk * b, c.num_tokens, c.width)), jnp.float32)

    @jax.jit
    def attention_part(state, x):
        block = nnx.merge(graphdef, state).blocks[0]
        return x + block.attn.project([a @ v for a, v in block.heads(x)])

    @jax.jit
    def mlp_part(state, x):
        return nnx.merge(graphdef, state).blocks[0].finish(x, jnp.zeros_like(x))

    @jax.jit
    def last_pooled(state, x):
        return nnx.merge(graphdef, state).blocks[-1](x, rows=rows)[0]

    variants = c.num_heads  # "head" mode only
    chunks_per_layer = variants // variant_chunk
    full_tail_blocks = sum(c.depth - 1 - layer - (rows is not None) for layer in range(c.depth - 1))
    times = {"baseline pass (once)": _best_time(baseline, state, jnp.asarray(images))}
    t_attn = _best_time(attention_part, state, x_chunk)
    t_mlp = _best_time(mlp_part, state, x_chunk)
    times["tail blocks: attention half"] = t_attn * full_tail_blocks * chunks_per_layer
    times["tail blocks: MLP half"] = t_mlp * full_tail_blocks * chunks_per_layer
    # The pruned layer itself: its MLP over all rows per variant (the removal is small).
    times["pruned layer: MLP per variant"] = t_mlp * (c.depth - 1) * chunks_per_layer
    if rows is not None:
        times["last layer, pooled rows only"] = (_best_time(last_pooled, state, x_chunk)
                                                 * (c.depth - 1) * chunks_per_layer)
    return times


# Main -------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224",
                        help="timm model name, randomly initialised (pretrained=False)")
    parser.add_argument("--images", type=int, default=16, help="seeded random-noise images")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="images per forward (torch) and per jitted call (ours)")
    parser.add_argument("--variant-chunk", type=int, default=None,
                        help="pruned heads vectorised together (default: from a memory budget)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (one run of ours, a share of the baseline's passes)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object last")
    args = parser.parse_args()

    torch.manual_seed(0)
    timm_model = timm.create_model(args.model, pretrained=False).eval()
    model = converters.from_timm(timm_model)
    c = model.config
    images = np.random.default_rng(0).standard_normal(
        (args.images, *c.image_size, c.in_channels)).astype(np.float32)
    images_nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())

    # Ours: the first call compiles; the compile time is what jax reports for it.
    compile_seconds = collections.defaultdict(float)
    listener = (lambda event, seconds, **kw: compile_seconds.__setitem__(
        event, compile_seconds[event] + seconds))
    jax.monitoring.register_event_duration_secs_listener(listener)
    start = time.perf_counter()
    ablate_heads(model, images, batch_size=args.batch_size, variant_chunk=args.variant_chunk)
    first_call = time.perf_counter() - start
    jax.monitoring.unregister_event_duration_listener(listener)
    # The machine is shared, so the two sides take turns: `--repeats` rounds, each one run of
    # our sweep and then a share of the baseline's passes, so that another process's burst
    # falls on both. Ours is the mean of its runs; the baseline is the sum of its passes.
    with torch.inference_mode():
        timm_model(images_nchw[:args.batch_size])  # warm-up
    runs = [(None, None)] + [(layer, head) for layer in range(c.depth)
                             for head in range(c.num_heads)]
    shares = np.array_split(np.arange(len(runs)), args.repeats)
    ours_runs, logits, pass_seconds = [], [], []
    for share in shares:
        start = time.perf_counter()
        ours = ablate_heads(model, images, batch_size=args.batch_size,
                            variant_chunk=args.variant_chunk)
        ours_runs.append(time.perf_counter() - start)
        share_logits, share_seconds = torch_passes(timm_model, images_nchw, args.batch_size,
                                                   [runs[i] for i in share])
        logits += share_logits
        pass_seconds += share_seconds
    logits = np.stack(logits)
    ours_s = float(np.mean(ours_runs))
    baseline_s = float(np.sum(pass_seconds))
    baseline_best_s = len(pass_seconds) * min(pass_seconds)

    probs = torch.softmax(torch.from_numpy(logits).double(), dim=-1).numpy()
    reference = probs[0].argmax(-1)
    torch_prob = probs[1:, np.arange(args.images), reference].reshape(
        c.depth, c.num_heads, args.images)
    ours_prob = ours.prob[0]
    max_abs_diff = float(np.abs(ours_prob - torch_prob).max())
    max_loss_diff = float(np.abs(np.log(ours_prob) - np.log(torch_prob)).max())
    reference_agrees = bool((ours.reference == reference).all())

    flops = sweep_flops(c, args.images)
    achieved = flops / ours_s
    peak = matmul_flops_per_s()
    variant_chunk = args.variant_chunk or default_variant_chunk(c, args.batch_size, c.num_heads)
    stages = stage_times(model, images[:args.batch_size], variant_chunk)
    chunks = -(-args.images // args.batch_size)
    stages = {k: v * chunks for k, v in stages.items()}

    result = {
        "model": args.model, "images": args.images, "batch_size": args.batch_size,
        "variant_chunk": variant_chunk, "heads": c.depth * c.num_heads,
        "ours_s": ours_s, "ours_compile_s": compile_seconds[COMPILE_EVENT],
        "ours_first_call_s": first_call, "baseline_s": baseline_s,
        "ours_runs_s": ours_runs, "baseline_best_s": baseline_best_s,
        "speedup": baseline_s / ours_s,
        "speedup_best_vs_best": baseline_best_s / min(ours_runs),
        "max_abs_diff": max_abs_diff,
        "max_log_prob_diff": max_loss_diff, "reference_agrees": reference_agrees,
        "prob_effect": float(np.abs(ours_prob - ours.baseline_prob[None, None]).max()),
        "ours_gflop": flops / 1e9, "naive_gflop": naive_flops(c, args.images) / 1e9,
        "ours_gflop_per_s": achieved / 1e9, "matmul_gflop_per_s": peak / 1e9,
        "flops_fraction": achieved / peak,
        "stages_s": stages,
        "torch_threads": torch.get_num_threads(), "jax_devices": len(jax.devices()),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "timm": timm.__version__, "python": platform.python_version()},
    }
    print(f"{args.model}, {args.images} images (seeded noise), batch {args.batch_size}, "
          f"{c.depth}x{c.num_heads} = {c.depth * c.num_heads} heads, variant chunk {variant_chunk}")
    print(f"ours (jax, jit + vmap):   {ours_s:8.2f} s   (mean of "
          f"{', '.join(f'{t:.2f}' for t in ours_runs)}; compile {result['ours_compile_s']:.2f} s, "
          f"not included; first call {first_call:.2f} s)")
    print(f"baseline (torch hooks):   {baseline_s:8.2f} s   "
          f"({len(runs)} forwards, {torch.get_num_threads()} threads; "
          f"{baseline_best_s:.2f} s at its fastest pass throughout)")
    print(f"speed-up:                 {result['speedup']:8.2f} x   "
          f"(best against best: {result['speedup_best_vs_best']:.2f} x)")
    print(f"max |prob diff|:          {max_abs_diff:.3g}   "
          f"(max |log prob diff| {max_loss_diff:.3g}; "
          f"pruning moves probs by up to {result['prob_effect']:.3g}; same reference: "
          f"{reference_agrees})")
    print(f"work: ours {result['ours_gflop']:.1f} GFLOP vs naive {result['naive_gflop']:.1f} GFLOP "
          f"({result['naive_gflop'] / result['ours_gflop']:.2f}x less)")
    print(f"achieved {result['ours_gflop_per_s']:.1f} GFLOP/s = "
          f"{result['flops_fraction']:.0%} of a "
          f"2048^3 float32 matmul in jax ({result['matmul_gflop_per_s']:.1f} GFLOP/s)")
    stages["rest (removal, classifier, metrics, loops)"] = max(0.0, ours_s - sum(stages.values()))
    print("where the time goes (stages timed alone, scaled by how often the sweep runs them; "
          "the rest is measured minus their sum):")
    for name, seconds in stages.items():
        print(f"  {name:44s} {seconds:7.2f} s  {seconds / ours_s:5.0%}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
