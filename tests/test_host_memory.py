"""trainer.host_heap: glibc keeps XLA:CPU's per-run temporary buffer mapped from one run to the next."""

import json
import os
import subprocess
import sys

import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.host_memory import held_heap_environment, hold_freed_memory

# In a fresh process (the heap setting is process-wide and must precede JAX's CPU client): a jitted
# function whose 64 MiB product is a temporary, run three times; page faults of the last run.
PROBE = """
import json, resource, sys
from jaxspo.host_memory import hold_freed_memory
held = hold_freed_memory(sys.argv[1])
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (x @ x.T).sum(axis=0))
x = jnp.ones((4096, 512), jnp.float32)
for _ in range(2):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(json.dumps({"held": held, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str, heap_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"} | (heap_env or {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"})
    env.pop("XLA_FLAGS", None)  # one CPU device, as a CPU training run has
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's; elsewhere hold_freed_memory does nothing")
def test_held_heap_stops_refaulting_the_temporary_buffer():
    system, held = probe("system"), probe("hold")
    assert (system["held"], held["held"]) == (False, True)
    buffer_pages = 4096 * 4096 * 4 // 4096
    assert system["faults"] > buffer_pages // 2  # glibc unmapped the 64 MiB temporary and faulted it back in
    assert held["faults"] < buffer_pages // 10  # kept mapped: no page of it faulted again
    by_environment = probe("system", held_heap_environment())  # the bench holds a peer's heap this way
    assert by_environment["faults"] < buffer_pages // 10


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="host heap mode must be one of system, hold, got 'keep'"):
        hold_freed_memory("keep")
    with pytest.raises(ConfigError, match="trainer.host_heap must be one of system, hold, got 'keep'"):
        load_config(None, ["trainer.host_heap=keep"])
