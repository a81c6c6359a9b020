"""vit_jax_va.checkpoint: exact save/load round trip and clear errors."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from jax_cases import random_images, random_vit

import vit_jax_va
from vit_jax_va import CheckpointError, ViTConfig

CONFIG = ViTConfig(image_size=8, patch_size=4, width=16, depth=2, num_heads=2, num_classes=3,
                   distillation_token=True, class_names=("a", "b", "c"))


def test_round_trip_is_exact(tmp_path):
    model = random_vit(CONFIG, seed=3)
    path = vit_jax_va.save(model, tmp_path / "ck")
    loaded = vit_jax_va.load(path)
    assert loaded.config == CONFIG
    assert vit_jax_va.weights_hash(loaded) == vit_jax_va.weights_hash(model)
    images = jnp.asarray(random_images(CONFIG))
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
    assert vit_jax_va.weights_hash(random_vit(CONFIG, seed=4)) != vit_jax_va.weights_hash(model)


def test_existing_directory_is_kept_unless_overwrite(tmp_path):
    first, second = random_vit(CONFIG, seed=1), random_vit(CONFIG, seed=2)
    path = vit_jax_va.save(first, tmp_path / "ck")
    with pytest.raises(FileExistsError, match="ck"):
        vit_jax_va.save(second, path)
    assert vit_jax_va.weights_hash(vit_jax_va.load(path)) == vit_jax_va.weights_hash(first)
    vit_jax_va.save(second, path, overwrite=True)
    assert vit_jax_va.weights_hash(vit_jax_va.load(path)) == vit_jax_va.weights_hash(second)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary directories left


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        vit_jax_va.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no vit_jax_va.json"):
        vit_jax_va.load(tmp_path / "empty")
    path = vit_jax_va.save(random_vit(CONFIG), tmp_path / "ck")
    meta = json.loads((path / "vit_jax_va.json").read_text())
    (path / "vit_jax_va.json").write_text(json.dumps({**meta, "kind": "PatternAutoencoder"}))
    with pytest.raises(CheckpointError, match="holds a 'PatternAutoencoder', not a 'ViT'"):
        vit_jax_va.load(path)
    (path / "vit_jax_va.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        vit_jax_va.load(path)
    wider = {**meta, "config": {**meta["config"], "width": 32}}
    (path / "vit_jax_va.json").write_text(json.dumps(wider))
    with pytest.raises(CheckpointError, match="cannot restore the arrays"):
        vit_jax_va.load(path)
    (path / "vit_jax_va.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        vit_jax_va.load(path)


def test_a_config_edited_over_the_same_weights_is_another_model(tmp_path):
    """The same arrays under an edited config (2 heads read as 4: every shape still fits) load
    as another model; its identity says so, and the explorer's live path refuses it for a run
    of the original, naming the setting (it computed 4-head attention for a 2-head run)."""
    from explorer.live import LiveUnavailable, load_model
    from vit_jax_va.sweep import Sweep, SweepOptions

    model = random_vit(CONFIG, seed=3)
    vit_jax_va.save(model, tmp_path / "ckpt")
    images = (np.random.default_rng(0).random((10, 8, 8, 3)) * 255).astype(np.uint8)
    out = Sweep(model, vit_jax_va.ImageDataset(images, labels=np.arange(10) % 3), tmp_path / "run",
                options=SweepOptions(chunk_size=5, batch_size=5, pattern_images=6, latent_dim=3,
                                     clusters=2, projection="pca", curve_images=4, keep_attention=()),
                model_source=str(tmp_path / "ckpt"), progress=False, log=lambda _: None).run()
    recorded = vit_jax_va.open_run(out).manifest["model"]
    assert vit_jax_va.identity_differences(recorded, vit_jax_va.load(tmp_path / "ckpt")) == []
    assert load_model(str(out)).config == CONFIG

    meta_path = tmp_path / "ckpt" / "vit_jax_va.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["num_heads"] = 4
    meta_path.write_text(json.dumps(meta))
    edited = vit_jax_va.load(tmp_path / "ckpt")
    assert vit_jax_va.weights_hash(edited) == recorded["weights_sha256"]  # the arrays are the same
    assert vit_jax_va.identity_differences(recorded, edited) == ["num_heads: 2 -> 4"]
    import explorer.live

    explorer.live.load_model.clear()  # the process-wide cache holds the model loaded above
    with pytest.raises(LiveUnavailable, match=r"not the run's model \(num_heads: 2 -> 4\)"):
        load_model(str(out))
