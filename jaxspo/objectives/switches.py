"""The objective switches of a config, read here and nowhere else (imports no jax: config validation reads them).

Lists (a loss of ``layout="list"``), the pair layout (``data.layout``, ``data.pack_pairs``), the per-pair offset
(a loss registered with ``needs_offset``), selfsup's degree term (``loss.selfsup.weight``), the KL regulariser
(``loss.kl.beta``) and the sequential stages (``stages``). :func:`jaxspo.objectives.build_objective` builds the
objective from them and :mod:`jaxspo.objectives.checks` checks how they combine.
"""

from __future__ import annotations

from typing import Any


def term_layouts(loss_cfg: Any) -> dict[str, str]:
    """Each configured term's layout, ``"pair"`` or ``"list"`` (validation keeps them all one layout)."""
    from jaxspo.losses import get_loss  # the registry imports jax: loaded on first use

    return {name: get_loss(name).layout for name in loss_cfg.terms}


def uses_lists(loss_cfg: Any) -> bool:
    """Whether the objective reads ranked lists."""
    return "list" in term_layouts(loss_cfg).values()


def offset_terms(loss_cfg: Any) -> list[str]:
    """The configured terms that read the per-pair ``offset`` field (set by the sequential stages)."""
    from jaxspo.losses import offset_losses

    return offset_losses(loss_cfg.terms)


def packed(data_cfg: Any) -> bool:
    """Whether pairs are packed rows holding the prompt once (``data.layout: packed``)."""
    return data_cfg.layout == "packed"


def packs_pairs(data_cfg: Any) -> bool:
    """Whether a packed row holds several pairs (``data.pack_pairs``)."""
    return packed(data_cfg) and data_cfg.pack_pairs


def selfsup_active(loss_cfg: Any) -> bool:
    """Whether selfsup's degree term is on (λ = ``loss.selfsup.weight`` > 0)."""
    return loss_cfg.selfsup.weight > 0


def kl_active(loss_cfg: Any) -> bool:
    """Whether the global KL regulariser is on (``loss.kl.beta`` > 0; any loss may use it)."""
    return loss_cfg.kl.beta > 0


def staged(cfg: Any) -> bool:
    """Whether the recipe trains sequential stages (a ``stages`` list)."""
    return bool(cfg.stages)
