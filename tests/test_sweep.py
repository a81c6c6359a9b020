"""vit-va sweep end to end: the store's contents, kill -9 and resume, bad images, reruns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from jax_cases import assert_same_predictions, random_vit
from PIL import Image

import vit_jax_va
from vit_jax_va import ViTConfig, store
from vit_jax_va.data import ImageDataset
from vit_jax_va.importance import ablate_heads
from vit_jax_va.sweep import Sweep, SweepOptions, usable_images

SMALL = dict(chunk_size=4, batch_size=4, pattern_images=6, projection="pca", curve_images=6)
CONFIG = ViTConfig(image_size=16, patch_size=4, in_channels=1, mean=(0.5,), std=(0.25,), width=32,
                   depth=2, num_heads=2, num_classes=3, crop_fraction=1.0,
                   interpolation="bilinear", class_names=("a", "b", "c"))


def _random_pixels() -> ImageDataset:
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (10, 16, 16), dtype=np.uint8),
                        labels=rng.integers(0, 3, 10), class_names=CONFIG.class_names,
                        description={"source": "random pixels"})


@pytest.fixture(scope="module")
def in_memory_run(tmp_path_factory):
    model = random_vit(CONFIG, seed=0)
    dataset = _random_pixels()
    out = tmp_path_factory.mktemp("runs") / "r"
    Sweep(model, usable_images(dataset), out, options=SweepOptions(**SMALL), model_source="random",
          progress=False, log=lambda _: None).run()
    return model, dataset, out


def test_store_holds_what_the_library_computes(in_memory_run):
    model, dataset, out = in_memory_run
    run = vit_jax_va.open_run(out)
    images = next(dataset.batches(CONFIG, batch_size=10)).images
    ablation = ablate_heads(model, images, dataset.labels, modes=vit_jax_va.PRUNE_MODES)
    importance = run.arrays("importance")
    for key in ("prob", "loss", "kl", "baseline_prob"):
        np.testing.assert_allclose(importance[key], getattr(ablation, key), atol=1e-6, err_msg=key)
    assert_same_predictions(importance, ablation, atol=1e-6)  # class orders: ties may swap
    attention = model(jnp.asarray(images), return_attention=True).attention
    entropy = vit_jax_va.head_entropy(vit_jax_va.hop_profile(attention, CONFIG.grid, 1))
    np.testing.assert_allclose(run.array("strength", "entropy"), entropy, atol=1e-5)
    assert run.array("strength", "profile").shape == (10, 2, 2, 4)
    assert run.array("importance", "taylor").shape == (2, 2, 10)
    np.testing.assert_array_equal(run.array("images", "labels"), dataset.labels)
    np.testing.assert_allclose(run.attention(0), np.asarray(attention[0]), atol=1e-6)
    assert run.kept_attention() == [0, 1, 2, 3]
    patch = run.arrays("patterns/patch")
    assert patch["items"].shape == (6 * 4, 7, 7) and patch["head_xy"].shape == (4, 2)
    assert run.arrays("patterns/cls")["items"].shape == (6 * 4, 2, 4, 4)
    # The curve is held out: measured on the odd positions, heads ranked on the even ones.
    curve = run.arrays("curve")
    assert curve["accuracy_most"].shape == curve["num_pruned"].shape == (5,)
    np.testing.assert_array_equal(curve["images"], [1, 3, 5, 7, 9])
    np.testing.assert_array_equal(curve["ranking_images"], [0, 2, 4, 6, 8])
    ranking_drop = (ablation.baseline_prob[None, None, ::2] - ablation.prob[1][..., ::2]).mean(-1)
    # Most important first: the heads in the order of their drops on the ranking images (heads
    # whose drops tie within the last bits, recomputed here by another program, in either order).
    order = np.asarray(curve["order_most"])
    assert sorted(order) == list(range(4))
    assert (np.diff(ranking_drop.reshape(-1)[order]) <= 1e-6).all(), (order, ranking_drop)
    for step, pruned in enumerate(curve["num_pruned"]):
        mask = np.ones(4, np.float32)
        mask[curve["order_most"][:pruned]] = 0
        logits = model(jnp.asarray(images[1::2]), head_mask=jnp.asarray(mask.reshape(2, 2)))
        accuracy = (np.asarray(logits).argmax(-1) == dataset.labels[1::2]).mean()
        assert curve["accuracy_most"][step] == pytest.approx(accuracy), step
    assert run.array("images", "thumbnails").shape == (10, 16, 16, 1)
    assert run.array("images", "overview_xy").shape == (10, 2)
    assert run.manifest["complete"] and not (out / "chunks").exists()


@pytest.mark.parametrize("family", ["siglip_layout", "beit_layout", "eva02_layout"])
def test_new_families_sweep_end_to_end(family, tmp_path):
    """SigLIP's layout (no class token, attention pooling) with qk-norm and QuickGELU, BEiT's
    (relative position bias, layer scale, no absolute positions) and EVA-02's (rotary embedding,
    SwiGLU with its inner norm; here with a register and no class token): the store holds what
    the library computes; the CLS pattern space (token 0's attention) is there only with a
    prefix token."""
    config = {"siglip_layout": CONFIG.replace(pool="map", class_token=False, qk_norm=True, act="quick_gelu"),
              "beit_layout": CONFIG.replace(rel_pos_bias=True, pos_embed=False, layer_scale=True),
              "eva02_layout": CONFIG.replace(rope=True, rope_ref_grid=(3, 3), swiglu=True, mlp_norm=True,
                                             pool="avg", class_token=False, num_register_tokens=1)}[family]
    model, dataset = random_vit(config, seed=1), _random_pixels()
    Sweep(model, usable_images(dataset), tmp_path / "r", options=SweepOptions(**SMALL), progress=False,
          log=lambda _: None).run()
    run = vit_jax_va.open_run(tmp_path / "r")
    images = next(dataset.batches(config, batch_size=10)).images
    ablation = ablate_heads(model, images, dataset.labels, modes=vit_jax_va.PRUNE_MODES)
    for key in ("prob", "kl", "baseline_prob"):
        np.testing.assert_allclose(run.array("importance", key), getattr(ablation, key), atol=1e-6, err_msg=key)
    attention = model(jnp.asarray(images), return_attention=True).attention
    assert attention.shape[-1] == config.num_tokens == config.num_prefix_tokens + 16
    entropy = vit_jax_va.head_entropy(vit_jax_va.hop_profile(attention, config.grid, config.num_prefix_tokens))
    np.testing.assert_allclose(run.array("strength", "entropy"), entropy, atol=1e-5)
    assert "patterns/patch" in run.groups()
    assert ("patterns/cls" in run.groups()) == (config.num_prefix_tokens > 0)
    assert run.manifest["complete"]


def test_a_backbone_sweeps_with_the_feature_metrics_alone(tmp_path):
    """A model without a classifier (a DINOv2/CLIP/MAE tower) sweeps end to end: the store holds
    the feature and patch-token metrics the library computes, the curve ranks heads by their
    feature change and measures it, and nothing of the prediction (probabilities, Taylor, top-5,
    the images' predictions) is there."""
    config = CONFIG.replace(num_classes=0, class_names=())
    model, dataset = random_vit(config, seed=2), _random_pixels()
    logs: list[str] = []
    Sweep(model, usable_images(dataset), tmp_path / "r", options=SweepOptions(**SMALL, patch_tokens=True),
          progress=False, log=logs.append).run()
    run = vit_jax_va.open_run(tmp_path / "r")
    images = next(dataset.batches(config, batch_size=10)).images
    ablation = ablate_heads(model, images, modes=vit_jax_va.PRUNE_MODES, patch_tokens=True)
    importance = run.arrays("importance")
    assert set(importance) == {"feature_cos", "feature_rel_l2", "patch_cos", "patch_rel_l2", "modes"}
    for key in ("feature_cos", "feature_rel_l2", "patch_cos", "patch_rel_l2"):
        np.testing.assert_allclose(importance[key], getattr(ablation, key), atol=1e-6, err_msg=key)
    assert set(run.arrays("images")) == {"ids", "labels", "features", "thumbnails", "overview_xy"}
    np.testing.assert_array_equal(run.array("images", "labels"), dataset.labels)  # kept for the views
    curve = run.arrays("curve")
    assert str(curve["metric"]) == "feature_cos" and "accuracy_most" not in curve
    ranking = ablation.feature_cos[1][..., ::2].mean(-1).reshape(-1)  # "head" is mode 1
    order = np.asarray(curve["order_most"])
    assert (np.diff(ranking[order]) <= 1e-6).all(), (order, ranking)
    for step, pruned in enumerate(curve["num_pruned"]):
        mask = np.ones(4, np.float32)
        mask[order[:pruned]] = 0
        features = np.asarray(model(jnp.asarray(images[1::2]), head_mask=jnp.asarray(mask.reshape(2, 2))), np.float64)
        unpruned = np.asarray(model(jnp.asarray(images[1::2])), np.float64)
        cos = (features * unpruned).sum(-1) / np.linalg.norm(features, axis=-1) / np.linalg.norm(unpruned, axis=-1)
        assert curve["feature_cos_most"][step] == pytest.approx((1 - cos).mean(), abs=1e-5), step
    assert curve["feature_cos_most"][-1] > 1e-3
    assert run.manifest["complete"] and run.manifest["accuracy"] is None
    summary = "\n".join(logs)
    assert "no classifier" in summary and "1 - cosine similarity of the pooled features" in summary


def test_attention_is_kept_for_the_chosen_images(tmp_path):
    model, dataset = random_vit(CONFIG, seed=0), _random_pixels()
    options = SweepOptions(**{**SMALL, "keep_attention": (7, 2, 7)})
    Sweep(model, usable_images(dataset), tmp_path / "r", options=options, progress=False,
          log=lambda _: None).run()
    run = vit_jax_va.open_run(tmp_path / "r")
    assert run.kept_attention() == [2, 7]
    images = next(dataset.batches(CONFIG, batch_size=10)).images
    attention = model(jnp.asarray(images), return_attention=True).attention
    np.testing.assert_allclose(run.attention(7), np.asarray(attention[7]), atol=1e-6)
    with pytest.raises(ValueError, match=r"image positions \[12\], but the sweep has 10 images"):
        Sweep(model, usable_images(dataset), tmp_path / "s",
              options=SweepOptions(**{**SMALL, "keep_attention": (3, 12)}))


def test_finished_run_does_nothing_and_other_settings_are_refused(in_memory_run):
    model, dataset, out = in_memory_run
    said = []
    before = (out / "manifest.json").read_text()
    Sweep(model, usable_images(dataset), out, options=SweepOptions(**SMALL), model_source="random",
          progress=False, log=said.append).run()
    assert said == [f"{out}: the sweep is already complete; nothing to do"]
    assert (out / "manifest.json").read_text() == before
    with pytest.raises(store.RunError, match=r"other options settings \(options.seed: 0 -> 1\)"):
        Sweep(model, usable_images(dataset), out, options=SweepOptions(**{**SMALL, "seed": 1}),
              model_source="random", progress=False).run()
    with pytest.raises(store.RunError, match=r"model.source: \"random\" -> \"other\""):
        Sweep(model, usable_images(dataset), out, options=SweepOptions(**SMALL),
              model_source="other", progress=False).run()


# A converted random timm model on a folder of PNGs, through the CLI ---------------------------

@pytest.fixture(scope="module")
def timm_checkpoint_and_pngs(tmp_path_factory):
    from timm_cases import make_case

    import converters

    root = tmp_path_factory.mktemp("timm_pngs")
    model = converters.from_timm(make_case("token", num_classes=2))
    vit_jax_va.save(model, root / "ckpt")
    rng = np.random.default_rng(1)
    for index in range(16):
        folder = root / "pngs" / ("cat" if index % 2 else "dog")
        folder.mkdir(parents=True, exist_ok=True)
        size = (40 + index, 36)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    (root / "pngs" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root / "ckpt", root / "pngs"


def _sweep_cli(checkpoint, pngs, out):
    return [sys.executable, "-m", "vit_jax_va.cli", "sweep", "--model", str(checkpoint),
            "--data", str(pngs), "--out", str(out), "--chunk-size", "4", "--batch-size", "4",
            "--pattern-images", "6", "--latent-dim", "3", "--clusters", "4", "--projection", "pca",
            "--curve-images", "10", "--no-progress"]


def _arrays(run_dir):
    return {str(p.relative_to(run_dir)): np.load(p) for p in sorted(Path(run_dir).rglob("*.npy"))
            if "autoencoder" not in p.parts}


@pytest.fixture(scope="module")
def uninterrupted(timm_checkpoint_and_pngs, tmp_path_factory):
    checkpoint, pngs = timm_checkpoint_and_pngs
    out = tmp_path_factory.mktemp("whole") / "run"
    whole = subprocess.run(_sweep_cli(checkpoint, pngs, out), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    return out, whole.stdout + whole.stderr


def test_a_bad_image_is_named_and_skipped(uninterrupted):
    out, said = uninterrupted
    assert said.count("broken.png") == 1, said  # the bad file is named (once), not fatal
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["num_images"] == 16
    assert [s["path"].endswith("broken.png") for s in manifest["data"]["skipped_files"]] == [True]
    assert manifest["data"]["class_names"] == ["cat", "dog"]
    assert not list(out.rglob("raw_*.npy")), "the patterns stage's inputs outlived the run"


def test_pattern_space_and_curve_flags_shape_the_store(uninterrupted):
    out, _ = uninterrupted
    run = vit_jax_va.open_run(out)
    options = run.manifest["options"]
    assert (options["latent_dim"], options["clusters"], options["curve_images"]) == (3, 4, 10)
    for space in ("patch", "cls"):
        patterns = run.arrays(f"patterns/{space}")
        assert patterns["latents"].shape[1] == 3 and len(patterns["prototypes"]) == 4
        assert patterns["head_shares"].shape[1] == 4
    assert int(run.arrays("curve")["num_images"]) == 8  # every other one of 16 images, <= 10


# (stage that must not be done yet when the process is killed, file whose appearance triggers it)
KILL_POINTS = {"analyse": ("collect", "chunks/000000.npz"),
               "patterns": ("patterns", "patterns/patch/items.npy")}


@pytest.mark.parametrize("during", sorted(KILL_POINTS))
def test_kill_and_resume_equals_an_uninterrupted_run(timm_checkpoint_and_pngs, uninterrupted,
                                                     tmp_path, during):
    checkpoint, pngs = timm_checkpoint_and_pngs
    not_done, trigger = KILL_POINTS[during]
    resumed = tmp_path / "resumed"
    process = subprocess.Popen(_sweep_cli(checkpoint, pngs, resumed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (resumed / trigger).exists() and time.time() < deadline:
        assert process.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed = json.loads((resumed / "manifest.json").read_text())
    assert not killed["complete"] and not_done not in killed["stages_done"]
    again = subprocess.run(_sweep_cli(checkpoint, pngs, resumed), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    ours, reference = _arrays(resumed), _arrays(uninterrupted[0])
    assert sorted(ours) == sorted(reference) and len(ours) > 30
    for name in reference:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    finished = subprocess.run(_sweep_cli(checkpoint, pngs, resumed), capture_output=True, text=True)
    assert "nothing to do" in finished.stdout


def test_a_run_resumed_on_changed_images_is_refused_naming_them(timm_checkpoint_and_pngs, tmp_path):
    """Killed after its first chunk, a run whose folder then loses one image and gains another
    (the same count, so every other setting matches) is refused naming both, not resumed with
    the next image's results filed under the first; with the folder restored it resumes."""
    import shutil

    checkpoint, pngs = timm_checkpoint_and_pngs
    folder = shutil.copytree(pngs, tmp_path / "pngs")
    out = tmp_path / "run"
    process = subprocess.Popen(_sweep_cli(checkpoint, folder, out), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "chunks" / "000000.npz").exists() and time.time() < deadline:
        assert process.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first = folder / "cat" / "01.png"
    kept = first.read_bytes()
    first.unlink()
    (folder / "cat" / "99.png").write_bytes((folder / "dog" / "00.png").read_bytes())
    again = subprocess.run(_sweep_cli(checkpoint, folder, out), capture_output=True, text=True)
    assert again.returncode != 0
    assert "other images" in again.stderr and "gone: cat/01.png" in again.stderr, again.stderr
    assert "new: cat/99.png" in again.stderr, again.stderr
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    (folder / "cat" / "99.png").unlink()
    first.write_bytes(kept)
    resumed = subprocess.run(_sweep_cli(checkpoint, folder, out), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_an_image_swapped_during_the_sweep_stops_it_by_name(tmp_path):
    """A file replaced by another readable image after the sweep checked it: the chunk that
    reads it stops the sweep naming it (its pixels are not the recorded ones)."""
    from vit_jax_va.data import load_image_folder, pixel_digest, read_image

    _png_folder(tmp_path / "pngs")
    dataset = usable_images(load_image_folder(tmp_path / "pngs"), log=lambda _: None)
    assert dataset.fingerprints() == [pixel_digest(read_image(p)) for p in dataset.images]
    victim, other = dataset.images[5], dataset.images[0]
    victim.write_bytes(other.read_bytes())  # still a valid PNG, other pixels
    sweep = Sweep(random_vit(CONFIG, seed=0), dataset, tmp_path / "run",
                  options=SweepOptions(**{**SMALL, "curve_images": 4}), progress=False, log=lambda _: None)
    with pytest.raises(store.RunError, match=rf"position\(s\) 5\).*{dataset.ids[5]}: its pixels are not"):
        sweep.run()


def _png_folder(root: Path, count: int = 8) -> Path:
    """`count` random 16 x 16 greyscale PNGs, one sub-folder per class of CONFIG."""
    rng = np.random.default_rng(3)
    for index in range(count):
        folder = root / CONFIG.class_names[index % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{index}.png")
    return root


def test_a_sweep_reads_each_file_once_per_use(tmp_path, monkeypatch):
    """The up-front check, the chunk (preprocessed input and thumbnail from one read) and, for
    the held-out images only, the curve stage: no file is decoded more often."""
    import vit_jax_va.data as data
    import vit_jax_va.data.dataset as dataset_module  # where ImageDataset reads its files

    reads: dict[str, int] = {}
    real_read_image = data.read_image

    def counted(path, **kwargs):
        reads[str(path)] = reads.get(str(path), 0) + 1
        return real_read_image(path, **kwargs)

    monkeypatch.setattr(dataset_module, "read_image", counted)
    dataset = usable_images(data.load_image_folder(_png_folder(tmp_path / "pngs")), log=lambda _: None)
    Sweep(random_vit(CONFIG, seed=0), dataset, tmp_path / "run",
          options=SweepOptions(**{**SMALL, "curve_images": 4}), progress=False, log=lambda _: None).run()
    held_out = set(vit_jax_va.open_run(tmp_path / "run").arrays("curve")["images"].tolist())
    assert len(held_out) == 4
    expected = {str(path): 2 + (position in held_out) for position, path in enumerate(dataset.images)}
    assert reads == expected


def test_an_image_broken_during_the_sweep_stops_it_by_name_and_resumes_once_restored(tmp_path):
    from vit_jax_va.data import load_image_folder

    _png_folder(tmp_path / "pngs")
    model = random_vit(CONFIG, seed=0)
    options = SweepOptions(**{**SMALL, "curve_images": 4})
    dataset = usable_images(load_image_folder(tmp_path / "pngs"), log=lambda _: None)
    victim = dataset.images[5]
    good = victim.read_bytes()
    victim.write_bytes(b"not a png any more")  # after the sweep checked every file
    sweep = Sweep(model, dataset, tmp_path / "run", options=options, progress=False, log=lambda _: None)
    with pytest.raises(store.RunError, match=rf"position\(s\) 5\).*{victim.name}"):
        sweep.run()
    assert list((tmp_path / "run" / "chunks").iterdir()), "the chunk before the broken image was lost"
    victim.write_bytes(good)
    dataset = usable_images(load_image_folder(tmp_path / "pngs"), log=lambda _: None)
    Sweep(model, dataset, tmp_path / "run", options=options, progress=False, log=lambda _: None).run()
    run = vit_jax_va.open_run(tmp_path / "run")
    assert len(run.arrays("images")["labels"]) == 8


def test_a_thumbnail_larger_than_its_canvas_keeps_its_middle():
    """An image under 64 px but larger than the run's thumbnail canvas (the model input size)
    is cut to its centre, as the model's centre crop sees it, not to its top-left corner."""
    from vit_jax_va.sweep import thumbnail, thumbnail_shape

    image = np.random.default_rng(0).integers(0, 256, (20, 18), dtype=np.uint8)
    assert thumbnail_shape(CONFIG) == (16, 16)
    np.testing.assert_array_equal(thumbnail(image, CONFIG)[..., 0], image[2:18, 1:17])
