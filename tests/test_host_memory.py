"""trainer.host_heap: glibc keeps XLA:CPU's per-run temporary buffer mapped from one run to the next."""

import json
import os
import subprocess
import sys

import pytest

from jaxspo.config import ConfigError, load_config
from jaxspo.host_memory import StepPacer, held_heap_environment, hold_freed_memory

# In a fresh process (the heap setting is process-wide and must precede JAX's CPU client): a jitted
# function whose 64 MiB product is a temporary, run three times; page faults of the last run. The product
# x @ x.T contracts only 64 columns: the buffer is what the test is about, not the FLOPs.
PROBE = """
import json, resource, sys
from jaxspo.host_memory import hold_freed_memory
held = hold_freed_memory(sys.argv[1])
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (x @ x.T).sum(axis=0))
x = jnp.ones((4096, 64), jnp.float32)
for _ in range(2):
    f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(json.dumps({"held": held, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def probe(mode: str, heap_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"} | (
        heap_env or {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}
    )
    env.pop("XLA_FLAGS", None)  # one CPU device, as a CPU training run has
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mallopt is glibc's; elsewhere hold_freed_memory does nothing"
)
def test_held_heap_stops_refaulting_the_temporary_buffer():
    system, held = probe("system"), probe("hold")
    assert (system["held"], held["held"]) == (False, True)
    buffer_pages = 4096 * 4096 * 4 // 4096
    assert system["faults"] > buffer_pages // 2  # glibc unmapped the 64 MiB temporary and faulted it back in
    assert held["faults"] < buffer_pages // 10  # kept mapped: no page of it faulted again
    by_environment = probe("system", held_heap_environment())  # the bench holds a peer's heap this way
    assert by_environment["faults"] < buffer_pages // 10


# A training-like step (a two-layer MLP's value and gradient, state donated) whose activations are ≈ 100 MiB
# of temporaries (the [4096, 2048] hidden layer and its gradient; a narrow second layer keeps the FLOPs low),
# dispatched back to back as the loop does, paced by StepPacer under a held heap. Per step:
# the heap's bytes in use when the pacer let it go, and the level the pacer measured before the previous one.
PACED = """
import json, sys
from jaxspo.host_memory import StepPacer, heap_bytes_in_use, hold_freed_memory
assert hold_freed_memory("hold")
import jax, jax.numpy as jnp
def step(state, x):
    loss = lambda w1, w2: (jnp.tanh(jnp.tanh(x @ w1) @ w2) ** 2).mean()
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(*state)
    return tuple(w - 1e-3 * g for w, g in zip(state, grads)), value
f = jax.jit(step, donate_argnums=0)
x, state = jnp.ones((4096, 256)), (jnp.full((256, 2048), 0.01), jnp.full((2048, 256), 0.01))
pacer, rows = StepPacer(), []
for _ in range(6):
    idle = pacer.idle_bytes
    pacer.before_step(state, {"x": x})
    rows.append({"idle_before_previous": idle, "in_use_at_dispatch": heap_bytes_in_use()})
    state, value = f(state, x)
jax.block_until_ready(value)
print(json.dumps(rows))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt and mallinfo2 are glibc's")
def test_paced_steps_start_only_after_the_previous_step_freed_its_temporaries():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", PACED], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert rows[0]["idle_before_previous"] is None and all(r["in_use_at_dispatch"] > 0 for r in rows)
    for row in rows[
        1:
    ]:  # right after its outputs are ready, a step often still holds its ≈ 100 MiB (see the figures in docs/speed.md)
        assert row["in_use_at_dispatch"] <= row["idle_before_previous"] + StepPacer().slack, rows


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="host heap mode must be one of system, hold, got 'keep'"):
        hold_freed_memory("keep")
    with pytest.raises(ConfigError, match="trainer.host_heap must be one of system, hold, got 'keep'"):
        load_config(None, ["trainer.host_heap=keep"])


@pytest.mark.parametrize("held", [False, True])
def test_install_registers_the_loop_hooks_the_heap_needs_and_removes_them(monkeypatch, held):
    """The loop runs no heap code of its own: install() adds the trims (and, when held, the pacing) as its hooks."""
    from jaxspo import host_memory
    from jaxspo.train import hooks

    calls = []
    monkeypatch.setattr(host_memory, "hold_freed_memory", lambda mode: held)  # this process's heap stays as it is
    monkeypatch.setattr(host_memory, "release_freed_memory", lambda: calls.append("trim"))
    monkeypatch.setattr(StepPacer, "before_step", lambda self, previous, batch: calls.append("pace"))
    uninstall = host_memory.install("hold" if held else "system")
    for point in ("after_compile", "after_eval", "after_save"):
        hooks.run_hooks(point)
    hooks.run_hooks("phase_start")
    hooks.run_hooks("before_step", None, {})
    assert calls == ["trim"] * 3 + (["pace"] if held else [])
    uninstall()
    for point in ("after_compile", "after_eval", "after_save", "phase_start"):
        hooks.run_hooks(point)
    hooks.run_hooks("before_step", None, {})
    assert len(calls) == 3 + held  # nothing ran after uninstall


def test_an_unknown_hook_point_is_named():
    from jaxspo.train.hooks import add_hook

    with pytest.raises(ValueError, match="unknown loop hook point 'after_step'; one of phase_start, before_step"):
        add_hook("after_step", print)
