"""Config keys that moved: an old key in a recipe or override stops with one line naming its new home.

Per-loss hyper-parameters live in ``loss.params.<term>`` (declared by each loss, see
:func:`jaxspo.losses.register_loss`) and the KL regulariser, which any loss may use, in ``loss.kl``.
"""

from __future__ import annotations

from typing import Any

from jaxspo.errors import ConfigError

_SOFT_SPO_TERMS = "one section per term: soft_spo, soft_spo_best_of_n, soft_spo_ranked"
MOVED_KEYS = {
    "loss.simpo_gamma": "loss.params.simpo.gamma",
    "loss.cpo_lambda": "loss.params.cpo.nll_weight",
    "loss.orpo_lambda": "loss.params.orpo.odds_ratio_weight",
    "loss.rdpo_alpha": "loss.params.rdpo.alpha",
    "loss.ropo_alpha": "loss.params.ropo.alpha (gropo: loss.params.gropo.alpha)",
    "loss.discopop_tau": "loss.params.discopop.tau",
    "loss.soft_spo.alpha": f"loss.params.soft_spo.alpha ({_SOFT_SPO_TERMS})",
    "loss.soft_spo.gamma": f"loss.params.soft_spo.gamma ({_SOFT_SPO_TERMS})",
    **{
        f"loss.soft_spo.kl_{name}": f"loss.kl.{name}"
        for name in (
            "beta",
            "prompts",
            "samples_per_prompt",
            "temperature",
            "max_new_tokens",
            "refresh",
            "prompt_source",
        )
    },
    "loss.soft_spo": "loss.params.<soft_spo term> (alpha, gamma) and loss.kl (the kl_* settings, without the "
    "kl_ prefix)",
}


def _has(tree: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


def reject_moved_keys(tree: dict[str, Any]) -> None:
    """Raises ConfigError ``<old key> moved to <new key>`` for the first moved key set in ``tree`` (a nested
    mapping)."""
    for old, new in MOVED_KEYS.items():
        if _has(tree, old):
            raise ConfigError(f"{old} moved to {new}")
