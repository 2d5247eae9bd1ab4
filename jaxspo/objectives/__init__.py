"""Objectives: what a train step optimises (see :mod:`jaxspo.objectives.base` and docs/methods/objectives.md).

- :mod:`~jaxspo.objectives.batches`: the typed batches (SFT, padded pairs, packed pairs, ranked lists, add-ons);
- :mod:`~jaxspo.objectives.sft`, :mod:`~jaxspo.objectives.pairs`, :mod:`~jaxspo.objectives.lists`: the objectives;
- :mod:`~jaxspo.objectives.pair_rows`, :mod:`~jaxspo.objectives.stage_rows`, :mod:`~jaxspo.objectives.selfsup_data`:
  host-side preparation of rows (pairs, a sequential stage's pairs, selfsup's degraded copies);
- :mod:`~jaxspo.objectives.selfsup`, :mod:`~jaxspo.objectives.kl`: add-on terms (selfsup's degree loss with its
  classify head; the KL regulariser with its sampler);
- :mod:`~jaxspo.objectives.switches`: the one reader of the objective switches of a config, and
  :mod:`~jaxspo.objectives.checks` how they combine (both import no jax: config validation uses them);
- :func:`build_objective`: the objective a config asks for.

The names below load on first use (they import jax), so the jax-free modules import without them.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaxspo.objectives.base import HostContext, Objective, Prepared, StageContext
    from jaxspo.objectives.batches import ListBatch, PackedPairBatch, PairBatch, SFTBatch
    from jaxspo.objectives.build import build_objective
    from jaxspo.objectives.pairs import packed_pair_logps, padded_pair_logps

__all__ = [
    "HostContext",
    "ListBatch",
    "Objective",
    "PackedPairBatch",
    "PairBatch",
    "Prepared",
    "SFTBatch",
    "StageContext",
    "build_objective",
    "packed_pair_logps",
    "padded_pair_logps",
]
_MODULES = ("base", "batches", "build", "pairs")  # where the names of __all__ live


def __getattr__(name: str) -> Any:
    """``jaxspo.objectives.<name>`` of :data:`__all__`, imported from its module on first use."""
    if name not in __all__:
        raise AttributeError(f"module 'jaxspo.objectives' has no attribute '{name}'")
    for module in _MODULES:
        home = importlib.import_module(f"jaxspo.objectives.{module}")
        if hasattr(home, name):
            return getattr(home, name)
    raise AttributeError(f"jaxspo.objectives.{name} is in none of {_MODULES}")
