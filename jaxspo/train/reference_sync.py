"""TR-DPO's reference update (``loss.reference_sync``): the resident reference moves toward the policy.

After every τ-th step (τ = ``every_steps``) the step sets π_ref ← α·πθ + (1 − α)·π_ref parameter by parameter
(Gorbatovski et al., arXiv 2404.09656; TRL's ``SyncRefModelCallback``); α = 1 is the hard update π_ref ← πθ. The
moving reference is part of the train state (:attr:`jaxspo.train.state.TrainState.reference`), so it stays on the
policy's shardings, is donated with the state and is saved and restored with every checkpoint.
"""

from __future__ import annotations

from typing import Any

import jax


def carries_reference(cfg: Any, reads_frozen: bool) -> bool:
    """Whether the train state holds a moving reference: the update is on and the objective reads a reference in
    the step (a preference phase; never the SFT warm start)."""
    return cfg.loss.reference_sync.every_steps > 0 and reads_frozen


def mixed(reference: Any, params: Any, alpha: float) -> Any:
    """α·params + (1 − α)·reference, leaf by leaf in the reference's dtype (α = 1: ``params``)."""
    return jax.tree.map(lambda r, p: ((1.0 - alpha) * r + alpha * p).astype(r.dtype), reference, params)


def synced(reference: Any, params: Any, step: jax.Array, sync: Any) -> Any:
    """The reference after optimizer step ``step`` (1-based, ``[]`` int32): :func:`mixed` with the new ``params``
    when ``step`` is a multiple of ``sync.every_steps``, else unchanged."""
    due = step % sync.every_steps == 0
    return jax.lax.cond(due, lambda: mixed(reference, params, sync.alpha), lambda: reference)
