"""``build_objective(cfg)``: the one place that reads the objective switches of a config.

Lists (a loss of ``layout="list"``), the pair layout (``data.layout``, ``data.pack_pairs``), the reference
(``loss.reference`` and which terms read it), the per-pair offset (losses registered with ``needs_offset``), the
sequential stages' preparation of their pairs (``stages``), selfsup (``loss.selfsup.weight``) and the KL regulariser
(``loss.kl.beta``) are decided here; the step, the loop and the compiler ask the returned
:class:`~jaxspo.objectives.Objective`.
"""

from __future__ import annotations

from typing import Any

from jaxspo.losses import get_loss
from jaxspo.objectives import kl, selfsup, switches
from jaxspo.objectives.base import Objective
from jaxspo.objectives.batches import OFFSET_FIELD, PRECOMPUTED_FIELDS, ListBatch
from jaxspo.objectives.lists import list_count, list_encoder, list_loss
from jaxspo.objectives.pair_rows import pair_encoder, precomputed_reference_logps
from jaxspo.objectives.pairs import PACKED, PADDED, pair_count, pair_loss
from jaxspo.objectives.selfsup_data import degraded_copies
from jaxspo.objectives.sft import sft_objective
from jaxspo.objectives.stage_rows import stage_reference_and_offset

PHASES = ("sft", "preference")


def needs_reference(loss_cfg: Any) -> bool:
    """Whether any configured loss term (or selfsup's reward) uses reference log-probs, and a reference is
    configured."""
    uses = any(get_loss(name).needs_reference for name in loss_cfg.terms) or selfsup.needs_reference(loss_cfg)
    return loss_cfg.reference != "none" and uses


def in_step_reference(loss_cfg: Any) -> bool:
    """Whether the step runs a reference forward itself (resident copy, or the base with adapters off)."""
    return needs_reference(loss_cfg) and loss_cfg.reference in ("resident", "adapter_off")


def precomputed_reference(loss_cfg: Any) -> bool:
    """Whether the pairs carry reference log-probs computed before training (``loss.reference: precomputed``)."""
    return needs_reference(loss_cfg) and loss_cfg.reference == "precomputed"


def _pair_objective(cfg: Any) -> Objective:
    loss_cfg = cfg.loss
    layout = PACKED if switches.packed(cfg.data) else PADDED
    fields = layout.batch_type.required() + (("packed_pair",) if switches.packs_pairs(cfg.data) else ())
    reference = "precomputed" if precomputed_reference(loss_cfg) else "step" if needs_reference(loss_cfg) else "none"
    fields += PRECOMPUTED_FIELDS if reference == "precomputed" else ()
    fields += (OFFSET_FIELD,) if switches.offset_terms(loss_cfg) else ()
    fields += selfsup.batch_fields(loss_cfg)
    term = selfsup.degree_term(loss_cfg) if switches.selfsup_active(loss_cfg) else None
    preparations = (degraded_copies,) if switches.selfsup_active(loss_cfg) else ()
    if switches.staged(cfg):  # π_{n−1}'s log-probs (whatever the reference mode: the offset needs them) and offset
        preparations += (stage_reference_and_offset,)
    elif reference == "precomputed":
        preparations += (precomputed_reference_logps,)
    return Objective(
        "pairs",
        layout.batch_type,
        fields,
        pair_loss(layout, loss_cfg, reference, term),
        pair_count,
        dims=selfsup.dims(loss_cfg),
        reads_frozen=in_step_reference(loss_cfg),
        reference_passes=(("rows",) if reference == "step" else ()) + selfsup.reference_passes(loss_cfg),
        aux=selfsup.classify_head(loss_cfg, cfg.model.hidden_size),
        encoder=pair_encoder(cfg),
        preparations=preparations,
    )


def _list_objective(cfg: Any) -> Objective:
    fields = ListBatch.required()
    reads = in_step_reference(cfg.loss)
    encoder = list_encoder(cfg, pair_encoder(cfg))
    return Objective("lists", ListBatch, fields, list_loss(cfg.loss), list_count, reads_frozen=reads, encoder=encoder)


def build_objective(cfg: Any, phase: str = "preference") -> Objective:
    """The objective of ``phase`` (``"sft"``: the warm start; ``"preference"``: pairs or lists, with selfsup's
    degree term and the KL regulariser as configured)."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase '{phase}'; one of {PHASES}")
    if phase == "sft":
        return sft_objective(cfg)
    objective = _list_objective(cfg) if switches.uses_lists(cfg.loss) else _pair_objective(cfg)
    return kl.with_kl_regulariser(objective, cfg) if switches.kl_active(cfg.loss) else objective
