"""Test-wide settings: strict promotion so silent broadcasting or dtype bugs fail loudly, full
float32 matmul precision so parity bounds hold on any backend, and no model-hub network access
(tests use random-init and shipped weights only)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
