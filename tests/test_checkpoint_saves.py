"""Parameter saves on one process: Orbax writes each replicated shard whole (no per-replica slicing program),
and the params read back equal."""

import logging

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo.checkpoint import restore_params, save_params, save_shards_whole_on_one_process


def test_saving_replicated_params_compiles_nothing_and_restores_them(tmp_path, caplog):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("fsdp", "tensor"))
    values = {"w": np.arange(40 * 3, dtype=np.float32).reshape(40, 3), "b": np.linspace(-1, 1, 24, dtype=np.float32)}
    params = nnx.State(
        {
            "w": jax.device_put(values["w"], NamedSharding(mesh, PartitionSpec("fsdp"))),  # 2 replicas per shard
            "b": jax.device_put(values["b"], NamedSharding(mesh, PartitionSpec())),  # 8 replicas
        }
    )
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        save_params(params, tmp_path / "params")
    assert [r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()] == []
    target = nnx.State({name: jax.numpy.zeros_like(array) for name, array in params.items()})
    restored = restore_params(tmp_path / "params", target)
    for name, expected in values.items():
        np.testing.assert_array_equal(np.asarray(restored[name]), expected)
        assert restored[name].sharding == params[name].sharding


def test_replacing_orbaxs_array_handler_prints_no_warning(caplog):
    """Orbax logs a warning on every handler override; ours is deliberate, so a run does not open with it."""
    level = logging.getLogger("absl").level
    with caplog.at_level(logging.INFO):
        save_shards_whole_on_one_process.__wrapped__()
    assert [r.getMessage() for r in caplog.records if "overriding" in r.getMessage()] == []
    assert logging.getLogger("absl").level == level
