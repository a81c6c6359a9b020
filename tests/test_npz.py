"""converters.from_npz: Google's `.npz` ViT checkpoints, against timm's own npz loader
(`timm.models.vision_transformer._load_weights`) on a timm model of the same shape.

The files are written here from random timm models in the two Google layouts (the original
`vision_transformer` one and big_vision's, blocks stacked); timm's loader reading a file must
give back the model it was written from, so the writer is checked too."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from timm_cases import TINY, randomize  # noqa: E402

import converters  # noqa: E402
from vit_jax_va import CheckpointError  # noqa: E402

# Google's ViTs use flax's nn.gelu, the tanh approximation; the timm models here do too.
CASES = {
    "original_token": (dict(TINY, act_layer="gelu_tanh"), "original"),
    "big_vision_token": (dict(TINY, act_layer="gelu_tanh"), "big_vision"),
    "big_vision_gap": (dict(TINY, act_layer="gelu_tanh", class_token=False, global_pool="avg", fc_norm=False),
                       "big_vision"),
    "big_vision_map_headless": (dict(TINY, act_layer="gelu_tanh", class_token=False, global_pool="map",
                                     num_classes=0), "big_vision"),
}


def _timm(kwargs, seed=0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return randomize(VisionTransformer(**kwargs), seed)


def write_google_npz(model, path, layout):
    """`model` (timm) in a Google layout: the inverse of timm's `_load_weights`."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    C, H = model.embed_dim, model.blocks[0].attn.num_heads
    big_vision = layout == "big_vision"
    p = "params/" if big_vision else ""
    out = {f"{p}embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
           f"{p}embedding/bias": sd["patch_embed.proj.bias"],
           f"{p}{'pos_embedding' if big_vision else 'Transformer/posembed_input/pos_embedding'}": sd["pos_embed"],
           f"{p}Transformer/encoder_norm/scale": sd["norm.weight"], f"{p}Transformer/encoder_norm/bias": sd["norm.bias"]}
    if "cls_token" in sd:
        out[f"{p}cls"] = sd["cls_token"]
    if "head.weight" in sd:
        out[f"{p}head/kernel"], out[f"{p}head/bias"] = sd["head.weight"].T, sd["head.bias"]
    attention, norm2, mlp = (0, 1, 0) if big_vision else (1, 2, 3)
    blocks = []
    for i in range(len(model.blocks)):
        b = f"blocks.{i}."
        q, k, v = np.split(sd[b + "attn.qkv.weight"], 3)
        qb, kb, vb = np.split(sd[b + "attn.qkv.bias"], 3)
        mha = f"MultiHeadDotProductAttention_{attention}/"
        block = {"LayerNorm_0/scale": sd[b + "norm1.weight"], "LayerNorm_0/bias": sd[b + "norm1.bias"],
                 f"LayerNorm_{norm2}/scale": sd[b + "norm2.weight"], f"LayerNorm_{norm2}/bias": sd[b + "norm2.bias"],
                 f"{mha}out/kernel": sd[b + "attn.proj.weight"].T.reshape(H, -1, C), f"{mha}out/bias": sd[b + "attn.proj.bias"]}
        for name, w, bias in (("query", q, qb), ("key", k, kb), ("value", v, vb)):
            block[f"{mha}{name}/kernel"] = w.T.reshape(C, H, -1)
            block[f"{mha}{name}/bias"] = bias.reshape(H, -1)
        for r in range(2):
            block[f"MlpBlock_{mlp}/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            block[f"MlpBlock_{mlp}/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
        blocks.append(block)
    if big_vision:  # stacked along a leading layer axis
        out.update({f"{p}Transformer/encoderblock/{k}": np.stack([b[k] for b in blocks]) for k in blocks[0]})
    else:
        out.update({f"Transformer/encoderblock_{i}/{k}": v for i, b in enumerate(blocks) for k, v in b.items()})
    if "attn_pool.latent" in sd:
        mp, mha = f"{p}MAPHead_0/", f"{p}MAPHead_0/MultiHeadDotProductAttention_0/"
        kw, vw = np.split(sd["attn_pool.kv.weight"], 2)
        kb, vb = np.split(sd["attn_pool.kv.bias"], 2)
        out.update({f"{mp}probe": sd["attn_pool.latent"], f"{mha}query/kernel": sd["attn_pool.q.weight"].T.reshape(C, H, -1),
                    f"{mha}query/bias": sd["attn_pool.q.bias"].reshape(H, -1), f"{mha}key/kernel": kw.T.reshape(C, H, -1),
                    f"{mha}key/bias": kb.reshape(H, -1), f"{mha}value/kernel": vw.T.reshape(C, H, -1),
                    f"{mha}value/bias": vb.reshape(H, -1), f"{mha}out/kernel": sd["attn_pool.proj.weight"].T.reshape(H, -1, C),
                    f"{mha}out/bias": sd["attn_pool.proj.bias"], f"{mp}LayerNorm_0/scale": sd["attn_pool.norm.weight"],
                    f"{mp}LayerNorm_0/bias": sd["attn_pool.norm.bias"]})
        for r in range(2):
            out[f"{mp}MlpBlock_0/Dense_{r}/kernel"] = sd[f"attn_pool.mlp.fc{r + 1}.weight"].T
            out[f"{mp}MlpBlock_0/Dense_{r}/bias"] = sd[f"attn_pool.mlp.fc{r + 1}.bias"]
    np.savez(path, **out)
    return path


def _forward(model, images):
    return converters.timm_forward(model, torch.from_numpy(images.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_from_npz_equals_timm_loading_the_same_file(case, tmp_path):
    from timm.models.vision_transformer import _load_weights

    kwargs, layout = CASES[case]
    source = _timm(kwargs)
    path = write_google_npz(source, tmp_path / "vit.npz", layout)
    reference = _timm(kwargs, seed=1)  # other weights until timm loads the file
    _load_weights(reference, str(path))
    images = np.random.default_rng(0).standard_normal((3, 32, 32, 3), np.float32)
    expected, attention = _forward(reference, images)
    np.testing.assert_allclose(expected, _forward(source, images)[0], atol=1e-5)  # the writer
    model = converters.from_npz(path)
    c = model.config
    assert (c.depth, c.num_heads, c.width, c.grid, c.class_token, c.pool, c.act) == (
        2, 3, 48, (4, 4), source.cls_token is not None, source.global_pool, "gelu_tanh")
    out = model(jnp.asarray(images), return_attention=True)
    assert np.max(np.abs(np.asarray(out.logits) - expected)) <= 1e-4
    assert np.max(np.abs(np.asarray(out.attention) - attention)) <= 1e-5


def test_what_the_arrays_do_not_say_is_asked_for_by_name(tmp_path):
    path = write_google_npz(_timm(dict(TINY, act_layer="gelu_tanh", img_size=(32, 48))), tmp_path / "r.npz", "original")
    with pytest.raises(CheckpointError, match=r"24 patch positions, not a square grid: pass image_size"):
        converters.from_npz(path)
    assert converters.from_npz(path, trained_size=(32, 48)).config.grid == (4, 6)
    arrays = dict(np.load(path))
    del arrays["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(CheckpointError, match="missing array Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"):
        converters.from_npz(tmp_path / "broken.npz", trained_size=(32, 48))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="other.npz: no embedding/kernel"):
        converters.from_npz(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="junk.npz: not a readable .npz"):
        converters.from_npz(tmp_path / "junk.npz")


def test_from_npz_at_another_size_equals_timm_set_to_that_size(tmp_path):
    from timm.models.vision_transformer import _load_weights

    kwargs, layout = CASES["big_vision_map_headless"]
    path = write_google_npz(_timm(kwargs), tmp_path / "vit.npz", layout)
    reference = _timm(kwargs, seed=1)
    _load_weights(reference, str(path))
    reference.set_input_size(img_size=(48, 40))
    model = converters.from_npz(path, image_size=(48, 40))
    images = np.random.default_rng(0).standard_normal((2, 48, 40, 3), np.float32)
    expected, attention = _forward(reference, images)
    out = model(jnp.asarray(images), return_attention=True)
    assert np.max(np.abs(np.asarray(out.logits) - expected)) <= 1e-4
    assert np.max(np.abs(np.asarray(out.attention) - attention)) <= 1e-5


def test_convert_and_sweep_read_npz_files(tmp_path):
    import json
    import subprocess
    import sys

    import vit_jax_va
    from vit_jax_va.inputs import resolve_model

    kwargs, layout = CASES["original_token"]
    path = write_google_npz(_timm(kwargs), tmp_path / "vit.npz", layout)
    result = subprocess.run([sys.executable, "-m", "vit_jax_va.cli", "convert", str(path), str(tmp_path / "out"),
                             "--image-size", "40", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "grid 5x5" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["logits_max_abs_diff"] <= 1e-4 and report["attention_max_abs_diff"] <= 1e-5
    assert vit_jax_va.weights_hash(resolve_model(str(path))) == vit_jax_va.weights_hash(converters.from_npz(path))
