"""Orbax checkpoints of a phase's whole train state plus its data-iterator position, and of bare params
(:func:`save_params` / :func:`restore_params`: the reference, a stage's policy, the final params).

Layout: ``RUN_DIR/checkpoints/<phase>/<step>/{state,data}``. Orbax writes each step into a temporary
folder and renames it when complete, so an interrupted save never replaces a good checkpoint. Restore
walks from the newest step to the oldest and skips (reporting the path) any that fails to load, and it
places every array on the shardings of the target state, so a different mesh shape can resume.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint._src.metadata import array_metadata_store

from jaxspo.errors import CheckpointError

log = logging.getLogger("jaxspo")


@functools.cache
def save_shards_whole_on_one_process() -> None:
    """On a single process, Orbax writes each replicated shard whole instead of a slice per replica.

    Replica-parallel saving lets several hosts share the writes of a replicated array; on one process it writes
    the same bytes but compiles a single-device slicing program per array shape and device on the first save
    (64 programs in a tiny run). Multi-process runs keep Orbax's default. Orbax's own default handler is
    replaced by the same handler with that one option changed (its array-metadata store kept).
    """
    if jax.process_count() > 1:
        return
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
    )
    orbax_log = logging.getLogger("absl")  # Orbax warns of every override; this one is deliberate
    level = orbax_log.level
    orbax_log.setLevel(logging.ERROR)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        orbax_log.setLevel(level)


class PhaseCheckpoints:
    """Save / restore policy for one training phase (``sft`` or ``preference``)."""

    def __init__(self, directory: Path, cfg):
        save_shards_whole_on_one_process()
        self.cfg = cfg
        self.directory = directory.resolve()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_last,
            keep_period=cfg.keep_every or None,
            enable_async_checkpointing=cfg.async_save,
            create=True,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))
        self._last_save_time = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether ``step`` should be saved under ``every_steps`` / ``every_seconds``."""
        by_steps = self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0
        by_time = self.cfg.every_seconds > 0 and time.monotonic() - self._last_save_time >= self.cfg.every_seconds
        return by_steps or by_time

    def save(self, step: int, state: Any, data_state: dict[str, Any]) -> None:
        """Starts saving (asynchronously unless configured otherwise); a step already on disk is kept."""
        if step in self.manager.all_steps():
            return
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
        self.manager.save(step, args=args, force=True)
        self._last_save_time = time.monotonic()

    def restore_latest(self, target_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, data state) of the newest checkpoint that loads, onto ``target_state``'s shardings."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
        for step in sorted(self.manager.all_steps(), reverse=True):
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore())
            try:
                restored = self.manager.restore(step, args=args)
            except Exception as err:  # a truncated or corrupt checkpoint: report it and fall back
                log.warning(
                    "checkpoint %s is unreadable (%s: %s); trying the previous one",
                    self.directory / str(step),
                    type(err).__name__,
                    str(err).splitlines()[0][:200],
                )
                continue
            return step, restored.state, restored.data
        return None

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def wait(self) -> None:
        """Blocks until background saves have been committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def restore_params(path: Path, target: Any) -> Any:
    """Reads params saved by :func:`save_params` onto the shardings of ``target`` (an nnx.State)."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(target))
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            pure = checkpointer.restore(path.resolve(), abstract)
    except Exception as err:  # Orbax and tensorstore raise many types for a missing, cut or foreign checkpoint
        first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: not a readable parameter checkpoint of this model ({type(err).__name__}: {first}); "
            "give the params folder of a run with this config (RUN_DIR/params or RUN_DIR/checkpoints/reference)"
        ) from err
    nnx.replace_by_pure_dict(target, pure)
    return target


def save_params(params: Any, path: Path) -> None:
    """Writes the policy parameters with Orbax (a plain nested dict of arrays)."""
    save_shards_whole_on_one_process()
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path.resolve(), nnx.to_pure_dict(params), force=True)
