"""Several JAX processes (`jax.distributed` on localhost, CPU collectives over gloo), as on
several hosts: `ablate_heads` with a mesh that spans both processes, and `vit-va sweep
--distributed` started once per process, each against the single-process result."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax_cases import random_vit
from PIL import Image

import vit_jax_va
from vit_jax_va import ViTConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = ViTConfig(image_size=16, patch_size=4, in_channels=1, mean=(0.5,), std=(0.25,), width=32,
                   depth=2, num_heads=2, num_classes=3, crop_fraction=1.0,
                   interpolation="bilinear", class_names=("a", "b", "c"))

ABLATE = r'''
import sys
import jax
import numpy as np
process = int(sys.argv[1])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2, process_id=process)
assert jax.process_count() == 2 and jax.device_count() == 2 and jax.local_device_count() == 1
from jax_cases import random_images, random_vit
from test_multihost import CONFIG
from vit_jax_va.importance import ablate_heads
model = random_vit(CONFIG, seed=3)
images = random_images(CONFIG, 5, seed=4)
labels = np.array([0, 1, 2, 0, 1])
mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))
spanning = ablate_heads(model, images, labels, modes=("head", "patch"), batch_size=2, mesh=mesh)
# One image per device: the same program as batch_size=1 on one device.
alone = ablate_heads(model, images, labels, modes=("head", "patch"), batch_size=1)
for name in ("prob", "correct", "loss", "kl", "top5_classes", "top5_probs", "baseline_prob",
             "reference", "head_confidence"):
    np.testing.assert_array_equal(getattr(spanning, name), getattr(alone, name), err_msg=name)
assert spanning.prob.shape == (2, 2, 2, 5)
print("SPANNING-OK", process)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"),
                                           os.environ.get("PYTHONPATH", "")])}


def _both(commands: list[list[str]], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Run the two processes' commands at once; both must end."""
    running = [subprocess.Popen(c, env=_env(), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for c in commands]
    done = []
    try:
        for process, command in zip(running, commands):
            out, err = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
    return done


@pytest.mark.slow
def test_ablate_heads_on_a_mesh_spanning_two_processes():
    address = f"localhost:{_free_port()}"
    results = _both([[sys.executable, "-c", ABLATE, str(i), address] for i in range(2)])
    for i, result in enumerate(results):
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"SPANNING-OK {i}" in result.stdout


@pytest.fixture(scope="module")
def checkpoint_and_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("multihost")
    vit_jax_va.save(random_vit(CONFIG, seed=5), root / "ckpt")
    rng = np.random.default_rng(6)
    for index in range(11):
        folder = root / "images" / CONFIG.class_names[index % 3]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{index:02d}.png")
    return root / "ckpt", root / "images"


def _sweep(checkpoint, images, out, *extra):
    return [sys.executable, "-m", "vit_jax_va.cli", "sweep", "--model", str(checkpoint),
            "--data", str(images), "--out", str(out), "--chunk-size", "2", "--batch-size", "2",
            "--pattern-images", "5", "--projection", "pca", "--no-progress", *extra]


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(run_dir)): np.load(p) for p in sorted(run_dir.rglob("*.npy"))
            if "autoencoder" not in p.parts}


@pytest.mark.slow
def test_distributed_sweep_equals_one_process(checkpoint_and_images, tmp_path):
    checkpoint, images = checkpoint_and_images
    single = subprocess.run(_sweep(checkpoint, images, tmp_path / "single"), env=_env(), cwd=REPO,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr

    address = f"localhost:{_free_port()}"
    results = _both([_sweep(checkpoint, images, tmp_path / "two", "--distributed", "--coordinator",
                            address, "--num-processes", "2", "--process-id", str(i))
                     for i in range(2)])
    for result in results:
        assert result.returncode == 0, result.stdout + result.stderr
    assert "sweep complete" in results[0].stdout
    assert "process 1: analysed its share of the chunks; process 0 finishes the run" in results[1].stdout

    ours, reference = _arrays(tmp_path / "two"), _arrays(tmp_path / "single")
    assert sorted(ours) == sorted(reference) and len(reference) > 30
    for name in reference:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    run = vit_jax_va.open_run(tmp_path / "two")
    assert run.manifest["complete"] and run.num_images == 11


def test_process_flags_need_distributed(checkpoint_and_images, tmp_path):
    checkpoint, images = checkpoint_and_images
    result = subprocess.run(_sweep(checkpoint, images, tmp_path / "x", "--process-id", "1"),
                            env=_env(), cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1 and "go with --distributed" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x").exists()
