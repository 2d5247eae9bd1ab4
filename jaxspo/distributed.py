"""Multi-process runs: ``jax.distributed`` set-up from the environment, global batches, one writer.

Every process runs the same program on the same global mesh (``jax.devices()`` spans all processes).
Every process plans the same global batches (the data pipeline is deterministic) and reads and
transfers only the rows its own devices hold (:func:`local_rows`, :func:`from_process_rows`; host
arrays held whole on every process go through :func:`to_global`), and host results of sharded
computations are gathered so that every process sees the same numbers (:func:`to_host`). Files that
are not checkpoints are written by process 0 alone (:func:`is_writer`); Orbax coordinates checkpoints.

Where the processes come from (:func:`plan_from_env`, first match wins):

1. ``JAXSPO_DISTRIBUTED=off``: one process, whatever else is set.
2. ``JAXSPO_DISTRIBUTED=auto``: plain ``jax.distributed.initialize()``, i.e. JAX's own detection
   (Cloud TPU VM metadata, SLURM, Open MPI, Kubernetes). ``jaxspo launch --tpu`` sets it.
3. Explicit: ``JAXSPO_COORDINATOR`` (host:port of process 0), ``JAXSPO_NUM_PROCESSES``,
   ``JAXSPO_PROCESS_ID`` (JAX's names ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
   ``JAX_PROCESS_ID`` are accepted too). ``jaxspo launch --local`` and ``--hosts`` set them.
4. SLURM: inside an ``srun`` step of more than one task (``SLURM_STEP_NUM_TASKS`` > 1); process
   count, id and coordinator (first node of the step) come from the SLURM variables.
5. A Cloud TPU VM (libtpu found TPU chips at ``import jax``): as ``auto``; on a one-host slice JAX
   finds one worker and the run is a single process.
6. Otherwise one process: nothing is initialised and every helper below is a plain single-host call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from jaxspo.errors import DistributedError

log = logging.getLogger("jaxspo")

MODE_VAR = "JAXSPO_DISTRIBUTED"
# Each setting: (jaxspo's name, JAX's name).
COORDINATOR_VARS = ("JAXSPO_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
NUM_PROCESSES_VARS = ("JAXSPO_NUM_PROCESSES", "JAX_NUM_PROCESSES")
PROCESS_ID_VARS = ("JAXSPO_PROCESS_ID", "JAX_PROCESS_ID")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins the run: ``source`` is "explicit", "slurm" or "auto" (JAX detects)."""

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _lookup(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    """(name, value) of the first of ``names`` set (non-empty) in ``env``."""
    return next(((name, env[name]) for name in names if env.get(name)), None)


def _int(name: str, value: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r} is not an integer") from None
    if number < low:
        raise DistributedError(f"{name}={number} must be at least {low}")
    return number


def _explicit_plan(env: Mapping[str, str]) -> Plan | None:
    found = {names[0]: _lookup(env, names) for names in (COORDINATOR_VARS, NUM_PROCESSES_VARS, PROCESS_ID_VARS)}
    if not any(found.values()):
        return None
    missing = [
        f"{names[0]} (or {names[1]})"
        for names in (COORDINATOR_VARS, NUM_PROCESSES_VARS, PROCESS_ID_VARS)
        if found[names[0]] is None
    ]
    given = ", ".join(f"{name}={value}" for name, value in filter(None, found.values()))
    if missing:
        raise DistributedError(f"multi-process run: {given} is set but {' and '.join(missing)} is missing")
    (coord_name, coordinator), (n_name, n_value), (id_name, id_value) = found.values()
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"{coord_name}={coordinator!r} must be host:port of process 0, e.g. 10.0.0.2:8476")
    num_processes = _int(n_name, n_value, 1)
    process_id = _int(id_name, id_value, 0)
    if process_id >= num_processes:
        raise DistributedError(f"{id_name}={process_id} must be below {n_name}={num_processes}")
    return Plan("explicit", coordinator, num_processes, process_id) if num_processes > 1 else None


def _on_cloud_tpu_vm() -> bool:
    """Whether ``import jax`` found Cloud TPU chips (JAX's own flag, set before any backend starts)."""
    from jax._src import cloud_tpu_init

    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)


def plan_from_env(env: Mapping[str, str] | None = None, on_tpu_vm: bool | None = None) -> Plan | None:
    """The multi-process plan the environment describes (see the module docstring); None = one process.

    ``on_tpu_vm`` overrides the Cloud TPU VM check (for tests).
    """
    env = os.environ if env is None else env
    mode = env.get(MODE_VAR, "")
    if mode not in ("", "off", "auto"):
        raise DistributedError(f"{MODE_VAR}={mode!r}: expected 'auto', 'off' or unset")
    if mode == "off":
        return None
    if mode == "auto":
        return Plan("auto")
    explicit = _explicit_plan(env)
    if explicit is not None:
        return explicit
    if "SLURM_STEP_NUM_TASKS" in env and _int("SLURM_STEP_NUM_TASKS", env["SLURM_STEP_NUM_TASKS"], 1) > 1:
        missing = [
            name
            for name in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
            if name not in env
        ]
        if missing:
            raise DistributedError(
                f"SLURM step of {env['SLURM_STEP_NUM_TASKS']} tasks without {', '.join(missing)}; run it with srun"
            )
        return Plan("slurm", None, int(env["SLURM_NTASKS"]), int(env["SLURM_PROCID"]))
    if _on_cloud_tpu_vm() if on_tpu_vm is None else on_tpu_vm:
        return Plan("auto")
    return None


def initialize(env: Mapping[str, str] | None = None) -> Plan | None:
    """Joins the multi-process run the environment describes (a no-op for one process or if joined).

    Must run before anything touches JAX devices. Returns the plan that was applied.
    """
    plan = plan_from_env(env)
    if plan is None or jax.distributed.is_initialized():
        return plan
    if plan.source == "explicit":
        jax.distributed.initialize(
            plan.coordinator, plan.num_processes, plan.process_id, cluster_detection_method="deactivate"
        )
    elif plan.source == "slurm":
        jax.distributed.initialize(cluster_detection_method="slurm")
    else:
        try:
            jax.distributed.initialize()
        except ValueError as err:  # JAX found no cluster to take the coordinator / counts from
            raise DistributedError(
                f"{MODE_VAR}=auto: JAX detected no TPU VM, SLURM, Open MPI or Kubernetes cluster ({err})"
            ) from None
    log.info(
        "process %d of %d (%s), %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        plan.source,
        jax.local_device_count(),
        jax.device_count(),
    )
    return plan


def is_writer() -> bool:
    """Whether this process writes the run's files (metrics, plots, config, tokenizer): process 0."""
    return jax.process_index() == 0


def local_rows(sharding: Sharding, shape: tuple[int, ...]) -> slice | np.ndarray:
    """Rows (leading-axis indices) of a global array of ``shape`` that this process's devices hold.

    In the ascending order :func:`jax.make_array_from_process_local_data` expects; a slice when they
    are contiguous (the usual case), else an index array. All rows when the leading axis is not split
    across processes.
    """
    starts = sorted({idx[0].indices(shape[0])[:2] for idx in sharding.addressable_devices_indices_map(shape).values()})
    if all(a[1] == b[0] for a, b in zip(starts, starts[1:])):
        return slice(starts[0][0], starts[-1][1])
    return np.concatenate([np.arange(start, stop) for start, stop in starts])


def to_global(host_batch: Any, sharding: Any) -> Any:
    """Global ``jax.Array``s from host arrays that hold the WHOLE global batch on every process.

    ``host_batch`` is an array or a pytree of arrays (e.g. a dict) and ``sharding`` a matching
    ``Sharding`` or pytree of them. Each process transfers only its :func:`local_rows`, so the row →
    device mapping is exactly the sharding's; with one process this is ``jax.device_put``.
    """

    def one(x: Any, s: Sharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(s, x[local_rows(s, x.shape)], x.shape)

    return jax.tree.map(one, host_batch, sharding)


def from_process_rows(local_batch: Any, sharding: Any, global_rows: int) -> Any:
    """Global ``jax.Array``s of ``global_rows`` rows from the rows THIS process holds of each.

    ``local_batch`` (a pytree of arrays) holds exactly this process's :func:`local_rows` of the global
    batch, in that order (as :class:`jaxspo.data.pipeline.BatchPipeline` reads them); ``sharding`` is a
    matching ``Sharding`` or pytree of them.
    """

    def one(x: Any, s: Sharding) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(s, x, (global_rows,) + x.shape[1:])

    return jax.tree.map(one, local_batch, sharding)


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly multi-process, sharded) array as numpy, identical on every process.

    Every process must call it for the same array (it is a collective when ``x`` spans processes).
    """
    if x.is_fully_addressable:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def broadcast_text(text: str) -> str:
    """Process 0's ``text`` on every process (a collective; ``text`` must have the same length on all)."""
    if jax.process_count() == 1:
        return text
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    return bytes(multihost_utils.broadcast_one_to_all(data)).decode()


def barrier(name: str) -> None:
    """Waits until every process reached the barrier ``name`` (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
