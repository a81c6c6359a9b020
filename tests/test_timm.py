"""converters.timm: numerical parity with timm, head-mask semantics, round trips, strict errors."""

from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from timm_cases import CASES, NAMED, make_case, make_named, random_images, set_fused

import converters
import vit_jax_va
from converters.timm_config import UnsupportedModelError
from vit_jax_va import CheckpointError

LOGITS_TOL = 1e-4
ATTENTION_TOL = 1e-5


def _compare(timm_model, model, images):
    logits, attention = converters.timm_forward(timm_model, torch.from_numpy(images.transpose(0, 3, 1, 2)))
    out = model(jnp.asarray(images), return_attention=True)
    assert out.attention.shape == attention.shape
    return (float(np.max(np.abs(np.asarray(out.logits) - logits))),
            float(np.max(np.abs(np.asarray(out.attention) - attention))))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_timm(case, fused):
    timm_model = make_case(case)
    set_fused(timm_model, fused)
    model = converters.from_timm(timm_model)
    logits_diff, attention_diff = _compare(timm_model, model, random_images(timm_model, 3))
    assert logits_diff <= LOGITS_TOL, f"{case}: logits differ by {logits_diff:.2e}"
    assert attention_diff <= ATTENTION_TOL, f"{case}: attention differs by {attention_diff:.2e}"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("name", NAMED)
def test_parity_named_architectures(name, fused):
    timm_model = make_named(name)
    set_fused(timm_model, fused)
    model = converters.from_timm(timm_model)
    logits_diff, attention_diff = _compare(timm_model, model, random_images(timm_model, 2))
    assert logits_diff <= LOGITS_TOL, f"{name}: logits differ by {logits_diff:.2e}"
    assert attention_diff <= ATTENTION_TOL, f"{name}: attention differs by {attention_diff:.2e}"


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_parity_dinov2_at_a_small_size(name):
    """timm's DINOv2 (layer scale, registers) built at 98 px (a 7 x 7 grid) to stay small."""
    timm_model = make_named(name, img_size=98)
    model = converters.from_timm(timm_model)
    assert model.config.grid == (7, 7) and model.config.layer_scale
    logits_diff, attention_diff = _compare(timm_model, model, random_images(timm_model, 2))
    assert logits_diff <= LOGITS_TOL and attention_diff <= ATTENTION_TOL, (logits_diff, attention_diff)


def test_config_read_from_timm():
    config = converters.config_from_timm(make_case("registers_no_embed_class_layer_scale"))
    assert (config.num_register_tokens, config.num_prefix_tokens, config.no_embed_class,
            config.layer_scale, config.num_tokens) == (4, 5, True, True, 5 + 16)
    config = converters.config_from_timm(make_case("pre_norm_no_qkv_bias_grey_rect"))
    assert (config.grid, config.in_channels, config.pre_norm, config.qkv_bias) == ((4, 3), 1, True, False)
    config = converters.config_from_timm(make_named("deit_tiny_distilled_patch16_224"))
    assert config.distillation_token and config.num_prefix_tokens == 2
    config = converters.config_from_timm(make_case("qk_norm_quick_gelu"))
    assert (config.qk_norm, config.act, config.pool) == (True, "quick_gelu", "token")
    config = converters.config_from_timm(make_case("beit_rel_pos_token_rect_headless"))
    assert (config.rel_pos_bias, config.pool, config.layer_scale, config.pos_embed, config.grid) == (
        True, "token", True, False, (4, 5))
    config = converters.config_from_timm(make_case("map_no_class_token_gelu_tanh"))
    assert (config.qk_norm, config.act, config.pool, config.num_prefix_tokens) == (False, "gelu_tanh", "map", 0)


@pytest.mark.parametrize("case, value", [
    *((case, value) for case in ("token", "registers_no_embed_class_layer_scale", "distilled",
                                 "qk_norm_quick_gelu", "map_no_class_token_gelu_tanh", "eva02_rope_swiglu")
      for value in (0.0, 0.3)),
    # BEiT's layer scale (N(0, 0.1) here) damps a head: only pruning it whole moves the logits
    # far enough for the check below to have power.
    ("beit_rel_pos_avg", 0.0)])
def test_head_mask_scales_the_heads_slice_of_the_projection_input(case, value):
    """Ours: head_mask[l, h] = value. timm: a pre-hook scales that head's slice of attn.proj's input."""
    timm_model = make_case(case)
    model = converters.from_timm(timm_model)
    layer, head = 1, 2
    head_dim = model.config.head_dim

    def scale_slice(_module, args):
        (x,) = args
        x = x.clone()
        x[..., head * head_dim:(head + 1) * head_dim] *= value
        return (x,)

    hook = timm_model.blocks[layer].attn.proj.register_forward_pre_hook(scale_slice)
    images = random_images(timm_model, 3)
    try:
        expected, _ = converters.timm_forward(timm_model, torch.from_numpy(images.transpose(0, 3, 1, 2)))
    finally:
        hook.remove()
    ours = model(jnp.asarray(images), head_mask=vit_jax_va.single_head_mask(model.config, layer, head, value))
    unmasked = model(jnp.asarray(images))
    assert np.max(np.abs(np.asarray(ours) - expected)) <= LOGITS_TOL
    # The mask must matter, or the comparison above proves nothing.
    assert np.max(np.abs(np.asarray(unmasked) - expected)) > 10 * LOGITS_TOL


def test_to_timm_round_trip_is_bit_exact_and_timm_loads_it_strictly():
    for case in ("registers_no_embed_class_layer_scale", "distilled", "pre_norm_no_qkv_bias_grey_rect",
                 "qk_norm_quick_gelu", "map_no_class_token_gelu_tanh", "swiglu_packed_scale_mlp_norm",
                 "beit_rel_pos_token_rect_headless", "beit_swiglu_scale_mlp", "eva02_rope_swiglu",
                 "eva02_unfused_qkv_scale_mlp_rect", "eva_rope_register_gap_xy_qk_norm",
                 "eva_rope_half_pre_norm_token", "relpos_bias_token_qk_norm_layer_scale"):
        model = converters.from_timm(make_case(case))
        state_dict = converters.to_timm(model)
        timm_model = converters.create_timm_model(model.config, state_dict)  # strict load
        assert set(timm_model.state_dict()) == set(state_dict)
        again = converters.from_timm(state_dict, config=model.config)
        assert vit_jax_va.weights_hash(again) == vit_jax_va.weights_hash(model)
        back = converters.from_timm(timm_model)
        assert vit_jax_va.weights_hash(back) == vit_jax_va.weights_hash(model)


def _tiny_named(num_classes=10):
    return make_named("vit_tiny_patch16_224", num_classes=num_classes)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("ckpt")
    timm_model = _tiny_named()
    state_dict = timm_model.state_dict()
    save_file(state_dict, folder / "tiny.safetensors")
    torch.save(state_dict, folder / "tiny.pth")
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state_dict.items()}},
               folder / "train.pth.tar.pth")
    return folder, timm_model


@pytest.mark.parametrize("filename", ["tiny.safetensors", "tiny.pth", "train.pth.tar.pth"])
def test_from_file_with_model_name(tiny_files, filename):
    folder, timm_model = tiny_files
    model = converters.from_timm(folder / filename, model_name="vit_tiny_patch16_224")
    assert model.config.num_classes == 10  # read from the head's shape
    assert vit_jax_va.weights_hash(model) == vit_jax_va.weights_hash(converters.from_timm(timm_model))


def test_state_dict_needs_an_architecture():
    with pytest.raises(ValueError, match="model_name"):
        converters.from_timm(_tiny_named().state_dict())


@pytest.mark.parametrize("damage", ["truncated", "empty"])
@pytest.mark.parametrize("filename", ["tiny.safetensors", "tiny.pth"])
def test_damaged_files_are_refused_naming_the_file(tiny_files, tmp_path, filename, damage):
    data = (tiny_files[0] / filename).read_bytes()
    bad = tmp_path / filename
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    with pytest.raises(CheckpointError, match=str(bad).replace(".", r"\.")):
        converters.from_timm(bad, model_name="vit_tiny_patch16_224")


def test_full_pickles_are_never_unpickled(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(make_case("token"), path)  # a whole nn.Module: needs a full unpickle
    with pytest.raises(CheckpointError, match="module.pth"):
        converters.from_timm(path, model_name="vit_tiny_patch16_224")


def test_wrong_architecture_names_keys_and_shapes(tiny_files):
    with pytest.raises(CheckpointError) as err:
        converters.from_timm(tiny_files[0] / "tiny.safetensors", model_name="vit_small_patch16_224")
    assert "blocks.0.attn.qkv.weight: checkpoint [576, 192], model [1152, 384]" in str(err.value)


def test_missing_unexpected_and_misshaped_keys_are_each_named():
    state_dict = dict(_tiny_named().state_dict())
    del state_dict["blocks.3.attn.qkv.bias"]
    state_dict["blocks.0.attn.extra"] = torch.zeros(3)
    state_dict["pos_embed"] = state_dict["pos_embed"][:, :50]
    with pytest.raises(CheckpointError) as err:
        converters.from_timm(state_dict, model_name="vit_tiny_patch16_224")
    message = str(err.value)
    assert "missing keys (1): blocks.3.attn.qkv.bias [576]" in message
    assert "unexpected keys (1): blocks.0.attn.extra [3]" in message
    assert "pos_embed: checkpoint [1, 50, 192], model [1, 197, 192]" in message
    assert "img_size" in message


@pytest.mark.parametrize("kwargs, setting", [
    (dict(scale_attn_norm=True), "scale_attn_norm"),
    (dict(act_layer="silu"), "activation"),
    (dict(global_pool="prr"), "global_pool='prr'"),
    (dict(norm_layer="rmsnorm"), "RmsNorm"),
    (dict(embed_norm_layer="layernorm"), "patch embedding"),
])
def test_unsupported_settings_are_refused_by_name(kwargs, setting):
    with pytest.raises(UnsupportedModelError, match=setting):
        converters.from_timm(make_case("token", **kwargs))


def test_a_shared_relative_position_bias_is_refused():
    with pytest.raises(UnsupportedModelError, match="use_shared_rel_pos_bias"):
        converters.from_timm(make_case("beit_rel_pos_avg", use_rel_pos_bias=False, use_shared_rel_pos_bias=True))


@pytest.mark.parametrize("kwargs, setting", [
    # The heads' outputs normed together before the projection: one head's part is not separable.
    (dict(scale_attn_inner=True), "scale_attn_inner"),
    (dict(attn_type="rope"), "AttentionRope"),
    (dict(use_post_norm=True), "use_post_norm"),
    (dict(global_pool="map"), "global_pool='map'"),
    (dict(rope_type="mixed"), "RotaryEmbeddingMixed"),
    (dict(init_values=0.1, attn_only_layer_scale=True), "attn_only_layer_scale"),
])
def test_unsupported_eva_settings_are_refused_by_name(kwargs, setting):
    with pytest.raises(UnsupportedModelError, match=setting):
        converters.from_timm(make_case("eva02_rope_swiglu", **kwargs))


def test_relpos_shared_bias_is_refused_and_files_are_read_through_timms_module(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(UnsupportedModelError, match="shared_rel_pos"):
        converters.from_timm(make_case("relpos_mlp_gap", shared_rel_pos=True))
    # A file's RelPosMlp weights are not a table: the file is loaded into timm's module first.
    timm_model = make_named("vit_relpos_small_patch16_224", num_classes=5)
    save_file(timm_model.state_dict(), tmp_path / "relpos.safetensors")
    model = converters.from_timm(tmp_path / "relpos.safetensors", model_name="vit_relpos_small_patch16_224")
    assert vit_jax_va.weights_hash(model) == vit_jax_va.weights_hash(converters.from_timm(timm_model))


def test_a_config_timm_cannot_build_is_refused_by_name():
    model = converters.from_timm(make_case("eva02_rope_swiglu"))
    with pytest.raises(ValueError, match="Eva cannot take distillation_token=True"):
        converters.create_timm_model(model.config.replace(distillation_token=True, pool="token"))
    with pytest.raises(ValueError, match="Beit cannot take .*; timm's VisionTransformerRelPos cannot take"):
        converters.create_timm_model(model.config.replace(rope=False, rope_ref_grid=None, rel_pos_bias=True,
                                                          qk_norm=True, pool="avg"))


def test_unsupported_architecture_class_is_refused():
    from timm.models.swin_transformer import SwinTransformer

    swin = SwinTransformer(img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1,), num_heads=(1,))
    with pytest.raises(UnsupportedModelError, match="SwinTransformer"):
        converters.from_timm(swin)


def test_npz_and_unknown_formats_are_refused(tmp_path):
    for name in ("w.npz", "w.onnx"):
        path = tmp_path / name
        np.savez(io.BytesIO(), a=1)
        path.write_bytes(b"x")
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            converters.from_timm(path, model_name="vit_tiny_patch16_224")


def test_hub_name_without_network_says_what_to_do():
    with pytest.raises(CheckpointError, match="local .safetensors"):
        converters.from_timm("vit_tiny_patch16_224.augreg_in21k_ft_in1k")


@pytest.mark.parametrize("size", [(48, 48), (24, 24), (40, 56)], ids=["up", "down", "rect"])
@pytest.mark.parametrize("case", ["token", "registers_no_embed_class_layer_scale", "distilled",
                                  "map_no_class_token_gelu_tanh", "eva02_rope_swiglu",
                                  "eva_rope_register_gap_xy_qk_norm"])
def test_a_model_converted_at_another_size_equals_timm_run_at_that_size(case, size):
    """`image_size=`: the position embedding resampled as timm does. The reference is the same
    timm model with `dynamic_img_size=True`, which resamples on the fly for the input it gets."""
    model = converters.from_timm(make_case(case), image_size=size)
    assert model.config.image_size == size and model.config.grid == (size[0] // 8, size[1] // 8)
    reference = make_case(case, dynamic_img_size=True)
    images = np.random.default_rng(1).standard_normal((2, *size, 3), np.float32)
    logits_diff, attention_diff = _compare(reference, model, images)
    assert logits_diff <= LOGITS_TOL and attention_diff <= ATTENTION_TOL, (logits_diff, attention_diff)
    # The model at its own size refuses these images.
    with pytest.raises(ValueError, match="images must be"):
        converters.from_timm(make_case(case))(jnp.asarray(images))


def test_a_state_dict_or_file_converted_at_another_size(tiny_files):
    folder, timm_model = tiny_files
    model = converters.from_timm(folder / "tiny.safetensors", model_name="vit_tiny_patch16_224",
                                 image_size=160)
    assert model.config.image_size == (160, 160) and model.config.grid == (10, 10)
    config = converters.config_from_timm(timm_model)
    again = converters.from_timm(timm_model.state_dict(), config=config, image_size=160)
    assert vit_jax_va.weights_hash(again) == vit_jax_va.weights_hash(model)
    with pytest.raises(ValueError, match=r"image_size \(100, 100\) is not a multiple of the patch size \(16, 16\)"):
        converters.from_timm(timm_model, image_size=100)
