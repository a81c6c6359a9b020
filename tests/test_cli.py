"""`vit-va convert`: a timm file in, a vit_jax_va checkpoint out, with a parity report."""

import json
import subprocess
import sys

import numpy as np
from timm_cases import make_named

import converters
import vit_jax_va


def _vit_va(*args):
    return subprocess.run([sys.executable, "-m", "vit_jax_va.cli", *args], capture_output=True,
                          text=True)


def test_convert_file_and_report_parity(tmp_path):
    from safetensors.torch import save_file

    timm_model = make_named("vit_tiny_patch16_224", num_classes=10)
    save_file(timm_model.state_dict(), tmp_path / "tiny.safetensors")
    result = _vit_va("convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "out"),
                     "--model-name", "vit_tiny_patch16_224", "--json")
    assert result.returncode == 0, result.stderr
    assert "12 layers x 3 heads" in result.stdout and "grid 14x14" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["logits_max_abs_diff"] <= 1e-4 and report["attention_max_abs_diff"] <= 1e-5
    loaded = vit_jax_va.load(tmp_path / "out")
    assert vit_jax_va.weights_hash(loaded) == vit_jax_va.weights_hash(converters.from_timm(timm_model))
    assert np.isfinite(report["logits_max_abs_diff"])

    again = _vit_va("convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "out"),
                    "--model-name", "vit_tiny_patch16_224")
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert "--overwrite" in again.stderr and "overwrite=True" not in again.stderr


def test_convert_at_another_image_size(tmp_path):
    """--image-size: timm resamples the position embedding; the parity report compares with the
    timm model set to that size."""
    from safetensors.torch import save_file

    save_file(make_named("vit_tiny_patch16_224", num_classes=10).state_dict(), tmp_path / "tiny.safetensors")
    result = _vit_va("convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "out"),
                     "--model-name", "vit_tiny_patch16_224", "--image-size", "160x128", "--json")
    assert result.returncode == 0, result.stderr
    assert "160x128 px" in result.stdout and "grid 10x8" in result.stdout
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["logits_max_abs_diff"] <= 1e-4 and report["attention_max_abs_diff"] <= 1e-5
    assert vit_jax_va.load(tmp_path / "out").config.image_size == (160, 128)
    bad = _vit_va("convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "bad"),
                  "--model-name", "vit_tiny_patch16_224", "--image-size", "100")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr
    assert "image_size (100, 100) is not a multiple of the patch size (16, 16)" in bad.stderr
    assert not (tmp_path / "bad").exists()
    typo = _vit_va("convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "bad"),
                   "--model-name", "vit_tiny_patch16_224", "--image-size", "16O")
    assert typo.returncode == 2 and "'16O' is not a size" in typo.stderr


def test_bad_input_is_one_clear_line(tmp_path):
    result = _vit_va("convert", str(tmp_path / "missing.pth"), str(tmp_path / "out"),
                     "--model-name", "vit_tiny_patch16_224")
    assert result.returncode == 1
    assert "no checkpoint file at" in result.stderr and "missing.pth" in result.stderr
    assert "Traceback" not in result.stderr
    # An existing output is refused first, before any conversion is tried.
    (tmp_path / "taken").mkdir()
    result = _vit_va("convert", str(tmp_path / "missing.pth"), str(tmp_path / "taken"),
                     "--model-name", "vit_tiny_patch16_224")
    assert result.returncode == 1 and "taken exists; choose another output folder" in result.stderr


def test_weights_of_another_architecture_are_refused_by_name(tmp_path):
    from safetensors.torch import save_file

    save_file(make_named("vit_tiny_patch16_224", num_classes=10).state_dict(),
              tmp_path / "tiny.safetensors")
    result = _vit_va("convert", str(tmp_path / "tiny.safetensors"), str(tmp_path / "out"),
                     "--model-name", "vit_small_patch16_224")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "'vit_small_patch16_224' does not load" in result.stderr
    assert "tiny.safetensors" in result.stderr and "blocks.0" in result.stderr
    assert not (tmp_path / "out").exists()


def test_without_torch_and_timm_the_cli_names_the_extra(tmp_path):
    # sys.modules[name] = None makes `import name` and importlib's find_spec fail, as on a core
    # install without the [timm] extra.
    script = ("import sys; sys.modules['torch'] = None; sys.modules['timm'] = None; "
              "from vit_jax_va.cli import main; sys.exit(main(sys.argv[1:]))")
    for args in (["convert", "vit_tiny_patch16_224", str(tmp_path / "out")],
                 ["sweep", "--model", "vit_tiny_patch16_224", "--out", str(tmp_path / "run")]):
        result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True,
                                text=True)
        assert result.returncode == 1, result.stderr
        assert "needs torch and timm" in result.stderr, result.stderr
        assert "pip install 'vit-jax-va[timm]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_sweep_out_that_is_a_file_is_one_clear_line(tmp_path):
    out = tmp_path / "results.txt"
    out.write_text("mine")
    result = _vit_va("sweep", "--images", "4", "--out", str(out), "--no-progress")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"{out} is a file, not a folder for a run" in result.stderr
    assert out.read_text() == "mine"


def test_an_interrupted_sweep_says_that_the_same_command_resumes(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "vit_jax_va.cli", "sweep", "--images", "40",
                                "--chunk-size", "8", "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out / "chunks").is_dir() and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted: what was finished is kept; run the same command to resume" in err
    assert "Traceback" not in err


def test_explore_on_a_port_in_use_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("localhost", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _vit_va("explore", str(tmp_path / "runs" / "demo"), "--port", str(port))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"port {port} on localhost is in use" in result.stderr


def test_sweep_at_another_image_size(tmp_path):
    """`vit-va sweep --image-size`: a vit_jax_va checkpoint run at 24 px instead of 16, its
    position embedding resampled by timm; the run records that config, and the explorer's live
    path loads the model at the same size (the identity check passes)."""
    import torch
    from jax_cases import random_vit
    from timm.models.vision_transformer import VisionTransformer

    from converters.timm_write import timm_kwargs
    from explorer.live import load_model

    config = vit_jax_va.ViTConfig(image_size=16, patch_size=4, in_channels=1, mean=(0.5,), std=(0.25,), width=32,
                                  depth=2, num_heads=2, num_classes=10, crop_fraction=1.0)
    model = random_vit(config, seed=3)
    vit_jax_va.save(model, tmp_path / "model")
    result = _vit_va("sweep", "--model", str(tmp_path / "model"), "--image-size", "24", "--data", "demo",
                     "--images", "6", "--out", str(tmp_path / "run"), "--chunk-size", "6", "--batch-size", "6",
                     "--pattern-images", "6", "--curve-images", "6", "--projection", "pca", "--no-progress")
    assert result.returncode == 0, result.stderr
    run = vit_jax_va.open_run(tmp_path / "run")
    assert run.config.image_size == (24, 24) and run.config.grid == (6, 6)
    live = load_model(str(tmp_path / "run"))
    assert live.config.image_size == (24, 24) and live.config.mean == (0.5,)
    # The resized model computes what timm computes at 24 px with the same weights.
    reference = VisionTransformer(**timm_kwargs(config), dynamic_img_size=True)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in converters.to_timm(model).items()})
    images = np.random.default_rng(0).standard_normal((2, 24, 24, 1), np.float32)
    expected, _ = converters.timm_forward(reference.eval(), torch.from_numpy(images.transpose(0, 3, 1, 2)))
    assert np.max(np.abs(np.asarray(live(images)) - expected)) <= 1e-4
