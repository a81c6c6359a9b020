"""`ablate_heads(..., mesh=...)` on 4 (forced host) devices against the single-device sweep.

XLA reads `--xla_force_host_platform_device_count` when jax initialises its backend, so the
comparison runs in a fresh interpreter with the flag set before jax is imported.
"""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import jax
import numpy as np

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
assert jax.device_count() == 4, jax.devices()

from _importance_models import CONFIGS, random_images, random_model
from jax_cases import assert_same_predictions
from vit_jax_va.importance import ablate_heads

config = CONFIGS["distilled"]
model = random_model(config, seed=21)
images = random_images(config, 7, seed=22)
labels = np.array([0, 1, 2, 3, 4, 5, 6])
modes = ("head", "cross", "none")
mesh = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
# batch_size=6 is rounded up to 8, two images per device; 7 images leave one padded.
sharded = ablate_heads(model, images, labels=labels, modes=modes, batch_size=6, mesh=mesh)
# The same per-device shape on one device: the same program, so the same bits.
same_shape = ablate_heads(model, images, labels=labels, modes=modes, batch_size=2)
for name in ("prob", "correct", "loss", "kl", "top5_classes", "top5_probs", "baseline_logits",
             "reference", "head_confidence"):
    np.testing.assert_array_equal(getattr(sharded, name), getattr(same_shape, name),
                                  err_msg=name)
# Another chunk shape rounds matmuls differently (last bits), hence the tolerance below.
single = ablate_heads(model, images, labels=labels, modes=modes, batch_size=8)
for name in ("prob", "loss", "kl", "top5_probs", "baseline_prob", "baseline_loss",
             "baseline_logits", "head_confidence"):
    a, b = getattr(single, name), getattr(sharded, name)
    assert a.shape == b.shape, (name, a.shape, b.shape)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=name)
assert_same_predictions(sharded, single)
assert np.abs(single.prob[0] - single.baseline_prob).max() > 1e-2
print("SHARDED-OK", np.abs(sharded.prob - single.prob).max())
'''


def test_sharded_sweep_equals_single_device():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ,
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SHARDED-OK" in done.stdout, done.stdout
