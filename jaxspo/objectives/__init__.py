"""Objectives: what a train step optimises (see :mod:`jaxspo.objectives.base` and docs/methods/custom-loss.md).

- :mod:`~jaxspo.objectives.batches`: the typed batches (SFT, padded pairs, packed pairs, ranked lists, add-ons);
- :mod:`~jaxspo.objectives.sft`, :mod:`~jaxspo.objectives.pairs`, :mod:`~jaxspo.objectives.lists`: the objectives;
- :mod:`~jaxspo.objectives.selfsup`, :mod:`~jaxspo.objectives.kl`: add-on terms (selfsup's degree loss with its
  classify head; the KL regulariser with its sampler);
- :func:`build_objective`: the one reader of the objective switches of a config.
"""

from jaxspo.objectives.base import HostContext, Objective, Prepared
from jaxspo.objectives.batches import ListBatch, PackedPairBatch, PairBatch, SFTBatch
from jaxspo.objectives.build import build_objective, in_step_reference, needs_reference, precomputed_reference
from jaxspo.objectives.pairs import packed_pair_logps, padded_pair_logps

__all__ = [
    "HostContext",
    "ListBatch",
    "Objective",
    "PackedPairBatch",
    "PairBatch",
    "Prepared",
    "SFTBatch",
    "build_objective",
    "in_step_reference",
    "needs_reference",
    "packed_pair_logps",
    "padded_pair_logps",
    "precomputed_reference",
]
