"""The device mesh the sweep and training split image batches over."""

from __future__ import annotations

import jax
import numpy as np


def local_data_mesh() -> jax.sharding.Mesh | None:
    """A 1-D mesh (axis "data") over this process's devices, or None with a single device.

    Local devices only: with several processes each one works on its own share of the data.
    """
    devices = jax.local_devices()
    if len(devices) < 2:
        return None
    return jax.sharding.Mesh(np.asarray(devices), ("data",))
