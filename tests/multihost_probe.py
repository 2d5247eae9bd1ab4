"""Run by tests/test_distributed.py as every process of a `--local 2 --devices-per-process 4` job.

Checks jaxspo.distributed's helpers where they matter: rows split across processes contiguously,
non-contiguously (a permuted mesh) and not at all (replicated); results gathered identically on every
process; process 0's text broadcast. Prints one "ok <process> <checks>" line, or raises.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo import distributed

plan = distributed.initialize()
assert plan is not None and plan.source == "explicit", plan
me = jax.process_index()
assert jax.process_count() == 2 and jax.device_count() == 8 and distributed.is_writer() == (me == 0)

x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)  # the same global batch on every process
devices = np.asarray(jax.devices())  # process 0 owns devices[:4], process 1 devices[4:]
cases = {
    "contiguous": (
        NamedSharding(Mesh(devices.reshape(2, 2, 2), ("data", "fsdp", "tensor")), PartitionSpec(("data", "fsdp"))),
        slice(8 * me, 8 * me + 8),
    ),
    "interleaved": (NamedSharding(Mesh(devices[[0, 4, 1, 5, 2, 6, 3, 7]], ("data",)), PartitionSpec("data")), None),
    "replicated": (NamedSharding(Mesh(devices, ("data",)), PartitionSpec()), slice(0, 16)),
}
for name, (sharding, expected_rows) in cases.items():
    rows = distributed.local_rows(sharding, x.shape)
    if expected_rows is None:  # blocks of 2 rows alternate between the processes
        expected_rows = np.concatenate([np.arange(4 * k + 2 * me, 4 * k + 2 * me + 2) for k in range(4)])
        np.testing.assert_array_equal(rows, expected_rows, err_msg=name)
    else:
        assert rows == expected_rows, (name, rows)
    g = distributed.to_global(x, sharding)
    for shard in g.addressable_shards:  # every device holds exactly its rows of the global batch
        np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index], err_msg=name)
    doubled = jax.jit(lambda a: a * 2)(g)  # sharded result, not fully addressable
    np.testing.assert_array_equal(distributed.to_host(doubled), 2 * x, err_msg=name)
    total = jax.jit(jnp.sum)(g)
    assert float(distributed.to_host(total)) == float(x.sum()), name

assert distributed.broadcast_text(["alpha", "bravo"][me]) == "alpha"
distributed.barrier("probe done")
print(f"ok {me} {len(cases)}", flush=True)
