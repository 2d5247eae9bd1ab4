"""Compiles a train step for every batch width before step 1 (``trainer.precompile``).

A bucketed run (``data.buckets``) meets a new batch width whenever a bucket first comes up; compiling
then stalls that step for seconds, and on an accelerator a width that does not fit in memory fails
mid-run. Compiling every width up front moves that work before the first step. The jitted step then
finds each program in JAX's in-memory compilation cache, so the loop calls it as before. (One at a time:
on 2 CPU cores, compiling the programs in parallel threads was slower and raised peak RSS by ~400 MiB.)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from jaxspo.train.hooks import run_hooks
from jaxspo.train.step import TrainStep

# field → (global shape, dtype) of the host fields of one batch the step will see
BatchLayout = Mapping[str, tuple[tuple[int, ...], Any]]


def precompile(step: TrainStep, state: Any, frozen: Any, layouts: Sequence[BatchLayout]) -> float:
    """Lowers and compiles ``step`` for each batch layout (state and ``frozen`` as the loop passes
    them); the abstract batch comes from the objective's batch type at the layout's dimensions (the fields
    an augmenter adds take the config's). Returns the seconds it took."""
    start = time.perf_counter()
    objective = step.objective
    for layout in layouts:
        dims = objective.batch_type.dims_of({name: shape for name, (shape, _) in layout.items()})
        step.fn.lower(state, frozen, objective.abstract_batch(dims, step.batch_sharding)).compile()
        run_hooks("after_compile")  # e.g. return the compiler's scratch before the next program's
    return time.perf_counter() - start
