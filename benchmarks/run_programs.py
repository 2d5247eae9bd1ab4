"""The XLA programs a training run compiles, by name: how many, and their compile seconds.

    python benchmarks/run_programs.py [CONFIG] [key=value ...]

Trains CONFIG (default ``configs/demo.yaml``) in this process with the test suite's XLA flags (8 CPU devices,
``--xla_backend_optimization_level=0``), a tiny model and a few steps unless the overrides say otherwise, and no
persistent compilation cache, so every program is compiled. Prints one JSON object: ``programs`` (count),
``compile_seconds`` (wall seconds XLA reports, summed), ``cpu_seconds`` of the whole process (import, data, steps),
``by_name`` ({program: [count, compile seconds]}) and the 1-minute load average at the end.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import resource
import sys
import tempfile
from pathlib import Path

os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_COMPILATION_CACHE_DIR"] = ""  # every program compiled, none read from disk

import jax  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' tiny-run settings
from tests.run_overrides import TINY_MODEL_AND_DATA  # noqa: E402

TINY = [
    *TINY_MODEL_AND_DATA,
    "trainer.sft_steps=6",
    "trainer.sft_batch_size=8",
    "trainer.steps=6",
    "trainer.batch_size=8",
    "trainer.eval_every=3",
    "trainer.grad_accum_steps=2",
    "eval.num_pairs=20",
    "eval.num_prompts=16",
    "eval.max_new_tokens=8",
    "logging.log_every=2",
    "logging.progress_bar=false",
    "logging.tensorboard=false",
    "logging.plot=false",
    "mesh.data=2",
    "mesh.fsdp=2",
    "mesh.tensor=2",
    "trainer.compilation_cache_dir=",
]
FINISHED = re.compile(r"Finished XLA compilation of (.*) in ([0-9.e+-]+) sec")


class CompileLog(logging.Handler):
    """Counts the programs JAX reports compiling (``jax_log_compiles``) and sums their compile seconds."""

    def __init__(self):
        super().__init__()
        self.by_name: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])

    def emit(self, record: logging.LogRecord) -> None:
        match = FINISHED.search(record.getMessage())
        if match:
            entry = self.by_name[match.group(1)]
            entry[0] += 1
            entry[1] += float(match.group(2))


def main(argv: list[str]) -> dict:
    from jaxspo.config import load_config
    from jaxspo.train.loop import train

    config = argv[0] if argv and "=" not in argv[0] else "configs/demo.yaml"
    overrides = TINY + [a for a in argv if "=" in a]
    if not any(o.startswith("run_dir=") for o in overrides):
        overrides.append(f"run_dir={tempfile.mkdtemp(prefix='jaxspo-run-programs-')}")  # a fresh run, no resume
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.config.update("jax_log_compiles", True)
    log = CompileLog()
    logging.getLogger("jax").addHandler(log)
    train(load_config(config, overrides), "tiny")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "config": config,
        "programs": sum(count for count, _ in log.by_name.values()),
        "compile_seconds": round(sum(seconds for _, seconds in log.by_name.values()), 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "by_name": {name: [count, round(seconds, 2)] for name, (count, seconds) in sorted(log.by_name.items())},
        "load_1min": os.getloadavg()[0],
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
