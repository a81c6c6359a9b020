"""Test-wide JAX settings: strict promotion so silent broadcasting or dtype bugs fail loudly,
and full float32 matmul precision so parity bounds hold on any backend."""

import jax

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
