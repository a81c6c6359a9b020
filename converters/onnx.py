"""A ViT encoder inside an ONNX graph exported from Hugging Face transformers -> `vit_jax_va.ViT`.

An export keeps the module paths in its node names (`/backbone/encoder/layer.0/attention/
attention/query/MatMul`) and in most initializer names (`backbone.encoder.layer.0.norm1.weight`);
projection weights are anonymous initializers (`onnx::MatMul_1966`) read through the node that
uses them. Both transformers namings are mapped: 4.x (`attention.attention.query`,
`attention.output.dense`, `intermediate.dense`, `output.dense`, `layernorm_before`) and 5
(`attention.q_proj`, `attention.o_proj`, `mlp.fc1`). The architecture comes from the arrays
(width, patch, depth, MLP width, layer scale: DINOv2), the LayerNorm epsilon and the attention
scale from the graph's constants, the activation from its ops (Erf: exact GELU, Tanh: tanh
GELU). The position embedding is the graph's own at the input size: onnxruntime runs the graph
once and reads the tensor added to the tokens (an export interpolates it inside the graph, as
transformers does). What follows the encoder (a task head, a decoder) is not read, and `log` is
told so. onnx and onnxruntime are imported inside the functions (the `[onnx]` extra).

Shapes: B batch, T tokens, C width, L layers, H heads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.strict import strict_load
from converters.timm_config import UnsupportedModelError
from vit_jax_va.checkpoint import CheckpointError
from vit_jax_va.config import ViTConfig
from vit_jax_va.model import ViT

# Module paths inside a block (both transformers namings) -> ours.
BLOCK_PARTS = {
    "attention.attention.query": "attn.q", "attention.attention.key": "attn.k", "attention.attention.value": "attn.v",
    "attention.q_proj": "attn.q", "attention.k_proj": "attn.k", "attention.v_proj": "attn.v",
    "attention.output.dense": "attn.proj", "attention.o_proj": "attn.proj",
    "norm1": "norm1", "layernorm_before": "norm1", "norm2": "norm2", "layernorm_after": "norm2",
    "layer_scale1": "ls1", "layer_scale2": "ls2",
    "mlp.fc1": "mlp.fc1", "intermediate.dense": "mlp.fc1", "mlp.fc2": "mlp.fc2", "output.dense": "mlp.fc2",
}
BLOCK = re.compile(r"^(?:encoder\.layer|layers|encoder\.layers)\.(\d+)\.(.+)$")


class OnnxGraph:
    """An ONNX file's graph, read once: initializers and Constant values by name, nodes."""

    def __init__(self, path: str | os.PathLike):
        import onnx
        from onnx import numpy_helper

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path}")
        try:
            self.model = onnx.load(str(self.path))
        except Exception as err:  # protobuf decode errors come in several types
            raise CheckpointError(f"{self.path}: not a readable ONNX file ({err})") from None
        graph = self.model.graph
        self.nodes = list(graph.node)
        self.arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.arrays[node.output[0]] = numpy_helper.to_array(attr.t)
        self.input = graph.input[0]

    def module_nodes(self, module: str) -> list[Any]:
        """The nodes of a module, by the path in their names (`a.b.0.c` is `/a/b.0/c/...`)."""
        prefix = "/" + _node_path(module) + "/"
        return [n for n in self.nodes if n.name.startswith(prefix)]


def _node_path(module: str) -> str:
    # transformers' ONNX node names keep "layer.0" as one path element.
    return re.sub(r"\.(?!\d)", "/", module)


def read_encoder(path: str | os.PathLike, log: Callable[[str], None] | None = None) -> tuple[OnnxGraph, str, dict[str, np.ndarray], dict[str, Any]]:
    """(graph, the encoder's prefix, its weights in our names `{"blocks.0.attn.q.kernel": ...}`,
    facts read off the graph: eps, head dim, activation, family)."""
    graph = OnnxGraph(path)
    cls_keys = [k for k in graph.arrays if k.endswith("embeddings.cls_token")]
    if not cls_keys:
        raise UnsupportedModelError(f"{graph.path}: no transformers ViT encoder in the graph "
                                    "(no initializer named ...embeddings.cls_token)")
    prefix = cls_keys[0][:-len("embeddings.cls_token")]
    weights: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(ours: str, name: str) -> None:
        weights[ours] = graph.arrays[name]
        used.add(name)

    for name in graph.arrays:
        if not name.startswith(prefix):
            continue
        module = name[len(prefix):]
        if module == "embeddings.cls_token":
            take("cls_token", name)
        elif module == "embeddings.distillation_token":
            take("dist_token", name)
        elif module in ("embeddings.register_tokens", "embeddings.mask_token"):
            if module == "embeddings.register_tokens":
                raise UnsupportedModelError(f"{graph.path}: register tokens (DINOv2 with registers) in an ONNX "
                                            "graph are not read yet")
        elif module.startswith("embeddings.patch_embeddings.projection."):
            take("patch_embed.proj." + ("kernel" if module.endswith("weight") else "bias"), name)
        elif module in ("layernorm.weight", "layernorm.bias"):
            take("norm." + ("scale" if module.endswith("weight") else "bias"), name)
        else:
            match = BLOCK.match(module)
            if match is None:
                continue
            layer, rest = match.groups()
            part, _, leaf = rest.rpartition(".")
            if part not in BLOCK_PARTS:
                continue
            ours = f"blocks.{layer}.{BLOCK_PARTS[part]}"
            if ours.endswith((".ls1", ".ls2")):
                take(ours + ".gamma", name)
            elif ours.endswith((".norm1", ".norm2")):
                take(f"{ours}.{'scale' if leaf == 'weight' else 'bias'}", name)
            elif leaf == "bias":
                take(ours + ".bias", name)
    # Projection weights: the initializer a module's MatMul (or Gemm) multiplies by.
    for node in graph.nodes:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        path = node.name.lstrip("/").rsplit("/", 1)[0].replace("/", ".")
        if not path.startswith(prefix):
            continue
        match = BLOCK.match(path[len(prefix):])
        if match is None or match.group(2) not in BLOCK_PARTS:
            continue
        weight = next((i for i in node.input[1:] if i in graph.arrays), None)
        if weight is None:
            continue
        kernel = graph.arrays[weight]
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        weights[f"blocks.{match.group(1)}.{BLOCK_PARTS[match.group(2)]}.kernel"] = kernel.T if transposed else kernel
        used.add(weight)
    ignored = sorted({n.split(".")[0] for n in graph.arrays
                      if not n.startswith(prefix) and not n.startswith("onnx::") and n not in used
                      and "/" not in n} - {""})
    if log is not None and ignored:
        log(f"{graph.path.name}: read the encoder under {prefix or 'the top level'!r}; not read: "
            f"{', '.join(ignored)} (what follows the encoder)")
    return graph, prefix, weights, _graph_facts(graph, prefix)


def _graph_facts(graph: OnnxGraph, prefix: str) -> dict[str, Any]:
    """Epsilon, head dim and activation of block 0, read off its nodes' constants and ops."""
    block = next((p for p in (f"{prefix}encoder.layer.0", f"{prefix}layers.0", f"{prefix}encoder.layers.0")
                  if graph.module_nodes(p)), None)
    if block is None:
        raise UnsupportedModelError(f"{graph.path}: no node of the encoder's block 0 (names like "
                                    f"/{_node_path(prefix + 'encoder.layer.0')}/...)")
    nodes = graph.module_nodes(block)

    def scalars(node):
        return [float(graph.arrays[i].reshape(-1)[0]) for i in node.input
                if i in graph.arrays and graph.arrays[i].size == 1]

    eps = None
    for node in nodes:
        if node.op_type == "LayerNormalization":
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
            break
        name = node.name.rsplit("/", 2)
        if node.op_type == "Add" and name[-2] in ("norm1", "layernorm_before") and name[-1] == "Add" and scalars(node):
            eps = scalars(node)[0]
            break
    if eps is None:
        raise UnsupportedModelError(f"{graph.path}: block 0's first LayerNorm epsilon is not in the graph")
    # The attention scale: q and k each times c (c^4 = 1 / head dim), or the scores times c or
    # divided by d (c^2 = 1 / head dim, d^2 = head dim).
    attention = [n for n in nodes if "/attention/" in n.name and "/output/" not in n.name
                 and "/o_proj/" not in n.name and n.op_type in ("Mul", "Div") and scalars(n)]
    head_dim = None
    muls = [scalars(n)[0] for n in attention if n.op_type == "Mul"]
    divs = [scalars(n)[0] for n in attention if n.op_type == "Div"]
    if len(muls) == 2 and abs(muls[0] - muls[1]) < 1e-7:
        head_dim = 1 / muls[0] ** 4
    elif len(muls) == 1 and not divs:
        head_dim = 1 / muls[0] ** 2
    elif len(divs) == 1 and not muls:
        head_dim = divs[0] ** 2
    ops = {n.op_type for n in nodes if "/mlp/" in n.name or "/intermediate/" in n.name}
    act = "gelu" if "Erf" in ops else "gelu_tanh" if "Tanh" in ops else None
    if act is None:
        raise UnsupportedModelError(f"{graph.path}: block 0's MLP activation (ops {sorted(ops)}; Erf and Tanh "
                                    "GELU are read)")
    return dict(eps=float(eps), head_dim=None if head_dim is None else int(round(head_dim)), act=act)


def from_onnx(path: str | os.PathLike, *, image_size: int | tuple[int, int] | None = None,
              num_heads: int | None = None, log: Callable[[str], None] | None = None) -> ViT:
    """Convert the ViT encoder of an ONNX graph exported from transformers (ViT, DeiT, DINOv2)
    to a `vit_jax_va.ViT` returning the pooled features (the class token after the final
    LayerNorm; DeiT: class and distillation tokens averaged).

    Args:
      path: the `.onnx` file.
      image_size: run at this size (pixels; an int: square) instead of the graph input's: the
        position embedding is the one the graph computes for that size.
      num_heads: the number of heads, when the graph's attention scale does not tell it.
      log: told what is not read (a head or decoder after the encoder).
    Preprocessing is transformers' default for the family (ImageNet mean and std, bicubic,
    resize to 256 and crop 224: 0.875); pass the checkpoint's own with `model.config.replace`.
    """
    graph, prefix, weights, facts = read_encoder(path, log)
    width = weights["cls_token"].shape[-1]
    kernel = weights.get("patch_embed.proj.kernel")
    if kernel is None:
        raise UnsupportedModelError(f"{graph.path}: no patch embedding ({prefix}embeddings.patch_embeddings.projection)")
    patch = tuple(int(s) for s in kernel.shape[2:])
    depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    heads = num_heads or (width // facts["head_dim"] if facts["head_dim"] else None)
    if not heads or width % heads:
        raise UnsupportedModelError(f"{graph.path}: the number of heads is not in the graph's attention scale; "
                                    "pass num_heads=")
    size = _input_size(graph) if image_size is None else (
        (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size))
    layer_scale = "blocks.0.ls1.gamma" in weights
    config = ViTConfig(image_size=size, patch_size=patch, in_channels=int(kernel.shape[1]), width=width, depth=depth,
                       num_heads=heads, mlp_ratio=weights["blocks.0.mlp.fc1.kernel"].shape[1] / width,
                       qkv_bias="blocks.0.attn.q.bias" in weights, act=facts["act"], class_token=True,
                       distillation_token="dist_token" in weights, layer_scale=layer_scale,
                       layer_norm_eps=facts["eps"], num_classes=0, pool="token")
    state = _ours(weights, config)
    state["pos_embed"] = graph_position_embedding(graph, prefix, size, config)
    return strict_load(state, config, key_of=lambda p: ".".join(str(x) for x in p), to_ours=lambda _, v: v,
                       source_layout=lambda _, shape: shape, origin=str(graph.path))


def _ours(weights: dict[str, np.ndarray], config: ViTConfig) -> dict[str, np.ndarray]:
    """Weights read off the graph -> our parameter names and layouts (q, k, v fused into qkv;
    a missing k bias, which DINOv2 and ViT have, or q/v bias, would be named by the strict load)."""
    out = {}
    for key, value in weights.items():
        if re.search(r"\.attn\.[qkv]\.", key):
            continue
        if key == "patch_embed.proj.kernel":
            value = value.transpose(2, 3, 1, 0)
        out[key] = value.astype(np.float32)
    for layer in range(config.depth):
        stem = f"blocks.{layer}.attn"
        parts = [weights.get(f"{stem}.{p}.kernel") for p in "qkv"]
        if all(p is not None for p in parts):
            out[f"{stem}.qkv.kernel"] = np.concatenate(parts, axis=1).astype(np.float32)
        biases = [weights.get(f"{stem}.{p}.bias") for p in "qkv"]
        if all(b is not None for b in biases):
            out[f"{stem}.qkv.bias"] = np.concatenate(biases).astype(np.float32)
    return out


def _input_size(graph: OnnxGraph) -> tuple[int, int]:
    dims = [d.dim_value for d in graph.input.type.tensor_type.shape.dim]
    if len(dims) != 4 or not dims[2] or not dims[3]:
        raise UnsupportedModelError(f"{graph.path}: the graph's input {graph.input.name!r} has no fixed "
                                    "height and width; pass image_size=")
    return (int(dims[2]), int(dims[3]))


def _session(graph: OnnxGraph, size: tuple[int, int], outputs: list[str]):
    """An onnxruntime session of the graph with `size` as its input height and width and
    `outputs` (tensor names) added as graph outputs."""
    import onnx
    import onnxruntime

    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = size
    del model.graph.output[:]
    for name in outputs:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def graph_position_embedding(graph: OnnxGraph, prefix: str, size: tuple[int, int], config: ViTConfig) -> np.ndarray:
    """The position embedding `[1, T, C]` that the graph adds to the tokens at `size`: of the two
    inputs of the embeddings' last Add, the one that does not change with the image."""
    embeddings = [n for n in graph.module_nodes(prefix + "embeddings")
                  if n.op_type == "Add" and "/patch_embeddings/" not in n.name]
    if not embeddings:
        raise UnsupportedModelError(f"{graph.path}: no Add of a position embedding in the embeddings")
    add = embeddings[-1]
    session = _session(graph, size, list(add.input))
    try:
        runs = [session.run(None, {graph.input.name: np.full((1, config.in_channels, *size), fill, np.float32)})
                for fill in (0.0, 1.0)]
    except Exception as err:  # onnxruntime's errors have no common public type
        raise UnsupportedModelError(
            f"{graph.path}: the graph does not run at {size[0]}x{size[1]} px (an export traced where no "
            f"position interpolation was needed is fixed to its input size, {_input_size(graph)}): "
            f"{str(err).splitlines()[0][:200]}") from None
    pos = [a for a, b in zip(*runs) if np.array_equal(a, b)]
    if len(pos) != 1 or pos[0].shape != (1, config.num_tokens, config.width):
        raise UnsupportedModelError(f"{graph.path}: the embeddings' last Add ({add.name}) does not add a "
                                    f"[1, {config.num_tokens}, {config.width}] position embedding at {size}")
    return pos[0].astype(np.float32)


def onnx_forward(path: str | os.PathLike, images_nchw: Any) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime on the original graph with the encoder's final LayerNorm output and every
    block's attention softmax added as graph outputs: (pooled features `[B, C]`: the class
    token after the final norm (DeiT: class and distillation averaged), attention
    `[B, L, H, T, T]`), as numpy."""
    graph, prefix, weights, _ = read_encoder(path)
    images = np.asarray(images_nchw, np.float32)
    norm = [n for n in graph.module_nodes(prefix + "layernorm") if n.op_type in ("Add", "LayerNormalization")]
    softmax = [n for n in graph.nodes if n.op_type == "Softmax" and n.name.startswith("/" + _node_path(prefix))
               and "/attention/" in n.name]
    if not norm or not softmax:
        raise UnsupportedModelError(f"{graph.path}: no final LayerNorm or attention softmax nodes in the encoder")
    depth = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    order = sorted(softmax, key=lambda n: int(re.search(r"layers?\.(\d+)/", n.name).group(1)))[:depth]
    session = _session(graph, tuple(images.shape[2:]), [norm[-1].output[0], *(n.output[0] for n in order)])
    # Image by image: an export may have fixed its batch size to 1.
    runs = [session.run(None, {graph.input.name: image[None]}) for image in images]
    tokens = np.concatenate([run[0] for run in runs])
    attention = [np.concatenate([run[1 + layer] for run in runs]) for layer in range(len(order))]
    pooled = (tokens[:, 0] + tokens[:, 1]) / 2 if "dist_token" in weights else tokens[:, 0]
    return pooled, np.stack(attention, axis=1)
