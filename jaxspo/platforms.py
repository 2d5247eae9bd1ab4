"""JAX's platform, chosen before its backends start: a machine without a TPU never runs libtpu's probing.

With the ``tpu`` extra installed (libtpu, for ``jaxspo compile``), JAX tries the TPU backend whenever
``JAX_PLATFORMS`` is unset. On a machine without TPU chips, libtpu then looks for a TPU host and prints its
probing errors (``Failed to find host bounds for accelerator type …``, ``INVALID_ARGUMENT: … unexpected
worker hostname …``) before JAX falls back to the CPU. :func:`choose_platforms` picks the CPU up front when
nothing but the CPU can serve.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import os
from collections.abc import Mapping

TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")  # what TPU VMs expose (v2–v4: accel, v5e and later: vfio)


def has_tpu_devices() -> bool:
    """Whether this machine exposes TPU chips."""
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES)


def has_accelerator_plugins() -> bool:
    """Whether a PJRT plugin other than libtpu is installed (CUDA, ROCm, …): then JAX is left to choose."""
    return (
        bool(importlib.metadata.entry_points(group="jax_plugins"))
        or importlib.util.find_spec("jax_plugins") is not None
    )


def choose_platforms(environ: Mapping[str, str] = os.environ) -> str | None:
    """Sets ``jax_platforms`` to "cpu" when ``JAX_PLATFORMS`` is unset, no TPU device file exists and no other
    accelerator plugin is installed; returns the value set, or None (left to JAX). Call it before the first
    use of a device; ``jaxspo compile`` does not (its AOT compiler is libtpu's)."""
    if "JAX_PLATFORMS" in environ or has_tpu_devices() or has_accelerator_plugins():
        return None
    import jax

    jax.config.update("jax_platforms", "cpu")
    return "cpu"
