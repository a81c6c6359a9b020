"""converters.from_hf: Hugging Face transformers ViT, distilled DeiT, DINOv2, CLIP and SigLIP against
transformers itself (eager attention), at their own size and another; model directories with
their image-processor config; refusals by name."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

import converters  # noqa: E402
import vit_jax_va  # noqa: E402
from converters.timm_config import UnsupportedModelError  # noqa: E402
from jax_cases import random_vit  # noqa: E402
from vit_jax_va.inputs import resolve_model  # noqa: E402

LOGITS_TOL = 1e-4
ATTENTION_TOL = 1e-5
SMALL = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=3, image_size=32, patch_size=8)


def _randomize(module, seed=0):
    """Redraw every parameter from N(0, 0.1) (HF zero-initialises biases and tokens, which
    would hide a swapped tensor)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return module.eval()


def _make(case):
    T = transformers
    build = {
        "vit_classifier": lambda: T.ViTForImageClassification(T.ViTConfig(**SMALL, intermediate_size=96, num_labels=5)),
        "vit_backbone_with_pooler": lambda: T.ViTModel(T.ViTConfig(**SMALL, intermediate_size=96)),
        "vit_no_qkv_bias_tanh_gelu": lambda: T.ViTForImageClassification(T.ViTConfig(
            **SMALL, intermediate_size=64, num_labels=3, qkv_bias=False, hidden_act="gelu_pytorch_tanh")),
        "deit_distilled": lambda: T.DeiTForImageClassificationWithTeacher(
            T.DeiTConfig(**SMALL, intermediate_size=96, num_labels=5)),
        "dinov2": lambda: T.Dinov2Model(T.Dinov2Config(**SMALL, mlp_ratio=2)),
        "dinov2_swiglu": lambda: T.Dinov2Model(T.Dinov2Config(**SMALL, mlp_ratio=4, use_swiglu_ffn=True)),
        "dinov2_registers": lambda: T.Dinov2WithRegistersModel(
            T.Dinov2WithRegistersConfig(**SMALL, mlp_ratio=2, num_register_tokens=2)),
        "clip_vision": lambda: T.CLIPVisionModel(T.CLIPVisionConfig(**SMALL, intermediate_size=96)),
        "clip_vision_projection": lambda: T.CLIPVisionModelWithProjection(
            T.CLIPVisionConfig(**SMALL, intermediate_size=96, projection_dim=16)),
        "siglip_vision": lambda: T.SiglipVisionModel(T.SiglipVisionConfig(**SMALL, intermediate_size=96)),
    }
    torch.manual_seed(0)
    return _randomize(build[case]())


CASES = ["vit_classifier", "vit_backbone_with_pooler", "vit_no_qkv_bias_tanh_gelu", "deit_distilled", "dinov2",
         "dinov2_swiglu", "dinov2_registers", "clip_vision", "clip_vision_projection", "siglip_vision"]


@pytest.mark.parametrize("size", [None, (48, 40), (24, 24)], ids=["own", "up_rect", "down"])
@pytest.mark.parametrize("case", CASES)
def test_parity_with_transformers(case, size):
    module = _make(case)
    model = converters.from_hf(module, image_size=size)
    height, width = size or (32, 32)
    assert model.config.image_size == (height, width)
    images = np.random.default_rng(1).standard_normal((3, height, width, 3), np.float32)
    logits, attention = converters.hf_forward(module, torch.from_numpy(images.transpose(0, 3, 1, 2)))
    out = model(jnp.asarray(images), return_attention=True)
    assert out.attention.shape == attention.shape
    assert np.max(np.abs(np.asarray(out.logits) - logits)) <= LOGITS_TOL
    assert np.max(np.abs(np.asarray(out.attention) - attention)) <= ATTENTION_TOL
    # The comparison can fail: another seed's weights give other logits.
    other = converters.from_hf(_randomize(_make(case), seed=1), image_size=size)
    assert np.max(np.abs(np.asarray(other(jnp.asarray(images))) - logits)) > 100 * LOGITS_TOL


def test_configs_read_from_transformers():
    config = converters.config_from_hf(_make("deit_distilled"))
    assert (config.distillation_token, config.num_prefix_tokens, config.num_classes) == (True, 2, 5)
    config = converters.config_from_hf(_make("dinov2"))
    assert (config.layer_scale, config.num_classes, config.mlp_ratio, config.layer_norm_eps) == (True, 0, 2.0, 1e-6)
    config = converters.config_from_hf(_make("vit_no_qkv_bias_tanh_gelu"))
    assert (config.qkv_bias, config.act, config.layer_norm_eps) == (False, "gelu_tanh", 1e-12)
    config = converters.config_from_hf(_make("dinov2_registers"))
    assert (config.num_register_tokens, config.num_prefix_tokens, config.no_embed_class) == (2, 3, True)
    config = converters.config_from_hf(_make("clip_vision_projection"))
    assert (config.pre_norm, config.act, config.num_classes, config.pool) == (True, "quick_gelu", 16, "token")
    config = converters.config_from_hf(_make("siglip_vision"))
    assert (config.class_token, config.pool, config.act, config.num_prefix_tokens) == (False, "map", "gelu_tanh", 0)


def _save(module, folder, processor):
    module.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_a_model_directory_and_its_image_processor(tmp_path):
    T = transformers
    module = _make("vit_classifier")
    folder = _save(module, tmp_path / "vit", T.ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], resample=2))
    model = converters.from_hf(folder)
    assert vit_jax_va.weights_hash(model) == vit_jax_va.weights_hash(converters.from_hf(module))
    c = model.config
    assert (c.mean, c.std, c.interpolation, c.crop_mode, c.crop_fraction) == (
        (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "bilinear", "squash", 1.0)
    # `vit-va sweep --model DIR` reads the same model.
    assert vit_jax_va.weights_hash(resolve_model(str(folder))) == vit_jax_va.weights_hash(model)
    # DINOv2's processor resizes the shorter side to 256 and crops 224: a crop fraction of 0.875.
    dinov2 = _save(_make("dinov2"), tmp_path / "dinov2", T.BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True, resample=3))
    c = converters.from_hf(dinov2).config
    assert (c.crop_mode, c.crop_fraction, c.interpolation) == ("center", 0.875, "bicubic")


def test_convert_command_reads_a_model_directory(tmp_path):
    folder = _save(_make("dinov2"), tmp_path / "dinov2", transformers.BitImageProcessor())
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "convert", str(folder), str(tmp_path / "out"),
                             "--image-size", "40", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "parity vs the source transformers model" in result.stdout and "grid 5x5" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["logits_max_abs_diff"] <= LOGITS_TOL and report["attention_max_abs_diff"] <= ATTENTION_TOL


@pytest.mark.parametrize("build, setting", [
    (lambda T: T.DeiTForImageClassification(T.DeiTConfig(**SMALL, intermediate_size=96)), "class token alone"),
    (lambda T: T.Dinov2ForImageClassification(T.Dinov2Config(**SMALL)), "mean patch token concatenated"),
    (lambda T: T.ViTModel(T.ViTConfig(**SMALL, hidden_act="relu")), "hidden_act='relu'"),
    (lambda T: T.BeitModel(T.BeitConfig(**SMALL)), "BeitModel: not a transformers model that vit_jax_va reads"),
])
def test_unsupported_models_are_refused_by_name(build, setting):
    with pytest.raises(UnsupportedModelError, match=setting):
        converters.from_hf(build(transformers))


def test_missing_directories_and_the_hub_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Hugging Face model directory at .*nothing"):
        converters.from_hf(tmp_path / "nothing")
    with pytest.raises(vit_jax_va.CheckpointError, match="download the model directory"):
        converters.from_hf("hf:google/vit-base-patch16-224")
    with pytest.raises(vit_jax_va.CheckpointError, match="download the model directory"):
        resolve_model("hf:google/vit-base-patch16-224")


# The way back: converters.to_hf / save_hf --------------------------------------------------

# Keys whose values to_hf writes differently, computing the same: DINOv2 with registers folds
# the class token's position into the class token; DINOv2's mask token is not part of the model.
REWRITTEN = {"dinov2_registers": {"embeddings.cls_token", "embeddings.position_embeddings"}}


@pytest.mark.parametrize("case", CASES)
def test_to_hf_round_trip(case):
    module = _make(case)
    model = converters.from_hf(module)
    assert converters.hf_architecture(model.config) == type(module).__name__
    back = converters.to_hf(model)
    assert type(back) is type(module)
    assert vit_jax_va.weights_hash(converters.from_hf(back)) == vit_jax_va.weights_hash(model)
    ours, theirs = back.state_dict(), module.state_dict()
    skip = REWRITTEN.get(case, set()) | {k for k in ours if k.endswith("mask_token")}
    assert not [k for k in ours if k not in skip and not torch.equal(ours[k], theirs[k])]
    images = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 3, 32, 32), np.float32))
    (logits, attention), (logits_back, attention_back) = (converters.hf_forward(m, images) for m in (module, back))
    assert np.max(np.abs(logits - logits_back)) <= 1e-6 and np.max(np.abs(attention - attention_back)) <= 1e-6


@pytest.mark.parametrize("case, overrides, architecture", [
    ("token", {}, "ViTForImageClassification"),
    ("registers_no_embed_class_layer_scale", {"num_classes": 0}, "Dinov2WithRegistersModel"),
    ("token", {"pre_norm": True, "act_layer": "quick_gelu", "num_classes": 0}, "CLIPVisionModel"),
    ("map_no_class_token_gelu_tanh", {"num_classes": 0}, "SiglipVisionModel"),
])
def test_a_timm_model_written_to_hf_computes_what_timm_computes(case, overrides, architecture):
    """timm -> ours -> transformers, checked against timm itself: two libraries apart."""
    from timm_cases import make_case, random_images

    timm_model = make_case(case, **overrides)
    module = converters.to_hf(converters.from_timm(timm_model))
    assert type(module).__name__ == architecture
    images = torch.from_numpy(random_images(timm_model, 2).transpose(0, 3, 1, 2))
    timm_logits, timm_attention = converters.timm_forward(timm_model, images)
    logits, attention = converters.hf_forward(module, images)
    assert np.max(np.abs(logits - timm_logits)) <= LOGITS_TOL
    assert np.max(np.abs(attention - timm_attention)) <= ATTENTION_TOL


@pytest.mark.parametrize("config, architecture, setting", [
    (dict(rope=True), None, "rope=True"),
    (dict(qk_norm=True), None, "qk_norm=True"),
    (dict(pool="avg", class_token=True), None, "pool='avg'"),
    (dict(pre_norm=True, image_size=(32, 48)), None, r"non-square input \(32, 48\)"),
    (dict(layer_scale=True, num_classes=4), None, "num_classes=4"),
    (dict(), "BeitModel", "BeitModel: not a transformers class"),
])
def test_what_transformers_cannot_hold_is_refused_by_name(config, architecture, setting):
    base = vit_jax_va.ViTConfig(image_size=32, patch_size=8, width=48, depth=1, num_heads=3, num_classes=0)
    model = random_vit(base.replace(**config), seed=0)
    with pytest.raises(UnsupportedModelError, match=setting):
        converters.to_hf(model, architecture)


def test_save_hf_writes_a_directory_transformers_and_from_hf_load(tmp_path):
    model = converters.from_hf(_make("clip_vision_projection"))
    # Other preprocessing than the default, so that reading it back shows.
    model.config = model.config.replace(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25), interpolation="bilinear",
                                        crop_fraction=0.8)
    folder = converters.save_hf(model, tmp_path / "clip")
    loaded = converters.from_hf(folder)
    assert vit_jax_va.weights_hash(loaded) == vit_jax_va.weights_hash(model)
    c = loaded.config
    assert (c.mean, c.std, c.interpolation, c.crop_mode, c.crop_fraction) == (
        (0.4, 0.5, 0.6), (0.2, 0.3, 0.25), "bilinear", "center", 0.8)
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert (processor.crop_size["height"], processor.size["shortest_edge"]) == (32, 40)
    assert type(transformers.AutoModel.from_pretrained(folder)).__name__.startswith("CLIPVision")
