"""How the objective switches of a config combine (imports no jax: ``jaxspo.config`` validates with it).

:func:`validate_objective` raises :class:`~jaxspo.errors.ConfigError` naming the offending key and what to do:
the KL regulariser's and selfsup's own sections, the terms' layouts (pairs or lists, not both), what lists,
selfsup, the packed layout and the length buckets accept, and a ``stages`` recipe. The switches themselves are
read through :mod:`jaxspo.objectives.switches`.
"""

from __future__ import annotations

from typing import Any

from jaxspo.data.settings import LAYOUTS
from jaxspo.data.synthetic_config import GOLD_DIMENSIONS
from jaxspo.errors import ConfigError
from jaxspo.objectives import switches


def validate_objective(cfg: Any) -> None:
    """Every objective check, in the order they are reported (after the mesh: packing divides by mesh.context)."""
    loss = cfg.loss
    for section in (lambda: loss.kl.validate(loss.reference, cfg.trainer.grad_accum_steps), loss.selfsup.validate):
        try:
            section()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    for ok, message in _combination_checks(cfg):
        if not ok:
            raise ConfigError(message)
    _validate_stages(cfg)
    _validate_layout(cfg)


def _combination_checks(cfg: Any) -> list[tuple[bool, str]]:
    """(holds, message if not) of the switches that must agree with each other and with the other sections."""
    loss, layouts = cfg.loss, switches.term_layouts(cfg.loss)
    lists, selfsup = "list" in layouts.values(), switches.selfsup_active(loss)
    return [
        (
            len(set(layouts.values())) <= 1,
            f"loss.terms: list losses and pair losses cannot be combined (they read different data): {layouts}",
        ),
        (
            loss.ld_alpha == 1.0 or not lists,
            "loss.ld_alpha weighs the tokens of pairs; it cannot be combined with list losses",
        ),
        (
            not (selfsup and lists),
            "loss.selfsup.weight: the degree loss degrades pairs' responses; it cannot be combined "
            "with list losses (soft_spo_best_of_n, soft_spo_ranked)",
        ),
        (
            not (cfg.lora.enabled and selfsup),
            "loss.selfsup.weight: selfsup is not supported with LoRA adapters yet (its held-out per-level metric "
            "scores full parameters); set lora.rank=0",
        ),
        (
            not (selfsup and (cfg.data.buckets or cfg.data.auto_buckets)),
            "loss.selfsup.weight: the degraded copies [N, sides, levels, T] are not cut to length buckets; set "
            "data.buckets=[] and data.auto_buckets=0",
        ),
        (
            loss.ld_alpha == 1.0 or not switches.packed(cfg.data),
            "loss.ld_alpha < 1 needs data.layout: padded "
            "(packed rows do not split a pair's tokens at its shared length yet)",
        ),
    ]


def _validate_layout(cfg: Any) -> None:
    """``data.layout: packed`` serves the pair losses' own log-probs; the paths that read padded rows refuse it."""
    if cfg.data.layout not in LAYOUTS:
        raise ConfigError(f"data.layout must be one of {', '.join(LAYOUTS)}, got '{cfg.data.layout}'")
    _validate_pack_pairs(cfg)
    if not switches.packed(cfg.data):
        return
    refused = [
        (
            switches.uses_lists(cfg.loss),
            "loss.terms: list losses (soft_spo_best_of_n, soft_spo_ranked) read ranked lists",
        ),
        (switches.selfsup_active(cfg.loss), "loss.selfsup.weight: the degree loss scores padded degraded copies"),
        (switches.kl_active(cfg.loss), "loss.kl.beta: the KL regulariser's step is built for padded rows"),
        (switches.staged(cfg), "stages: sequential recipes"),
    ]
    for bad, what in refused:
        if bad:
            raise ConfigError(f"data.layout: 'packed' is not supported here ({what}); set data.layout=padded")


def _validate_pack_pairs(cfg: Any) -> None:
    """``data.pack_pairs`` and its knobs: packed rows, a fixed width (no length buckets), whole pairs per row."""
    data, multiple = cfg.data, cfg.mesh.width_multiple()
    if data.pack_width < 0 or data.pack_width % multiple:
        raise ConfigError(
            f"data.pack_width must be 0 (= the longest pair) or a positive multiple of {multiple} (8 "
            f"and mesh.context), got {data.pack_width}"
        )
    if data.pack_row_buckets < 1:
        raise ConfigError(
            f"data.pack_row_buckets must be ≥ 1 (row counts compiled per run), got {data.pack_row_buckets}"
        )
    if not data.pack_pairs:
        if data.pack_width:
            raise ConfigError(
                f"data.pack_width={data.pack_width} is read only with data.pack_pairs=true; set "
                "data.pack_pairs=true or data.pack_width=0"
            )
        return
    if not switches.packed(data):
        raise ConfigError(
            f"data.pack_pairs=true packs pair rows of data.layout=packed (got '{data.layout}'); set data.layout=packed"
        )
    if data.buckets or data.auto_buckets:
        raise ConfigError(
            "data.pack_pairs=true fills rows of one width (data.pack_width), so it takes no length "
            "buckets; set data.buckets=[] and data.auto_buckets=0"
        )


def _validate_stages(cfg: Any) -> None:
    """A ``stages`` recipe: one λ per earlier stage, known dimensions, the ``sequential`` loss, cached logps."""
    if not switches.staged(cfg):
        for name in switches.offset_terms(cfg.loss):
            raise ConfigError(
                f"loss.terms: '{name}' needs a 'stages' list (its offsets come from the earlier stages' policies)"
            )
        return
    if set(cfg.loss.terms) != {"sequential"}:
        raise ConfigError(
            "loss.terms: a 'stages' recipe trains every stage with the sequential loss; set "
            f"loss.terms={{sequential: 1.0}}, got {list(cfg.loss.terms)}"
        )
    if cfg.model.reference_path:
        raise ConfigError(
            "model.reference_path: a 'stages' recipe's references are its own policies (π_0 = the "
            "SFT result); leave it empty"
        )
    modes = (
        ("precomputed", "adapter_off") if cfg.lora.enabled else ("precomputed",)
    )  # adapter_off: π_(n-1) = stage n's adapter off
    if cfg.loss.reference not in modes:
        raise ConfigError(
            "loss.reference: a 'stages' recipe's reference is π_(n-1); set loss.reference to "
            f"{' or '.join(modes)}, got '{cfg.loss.reference}'"
        )
    for index, stage in enumerate(cfg.stages):
        where = f"stages[{index}]"
        if stage.dimension not in GOLD_DIMENSIONS:
            raise ConfigError(
                f"{where}.dimension: unknown dimension '{stage.dimension}'; the {cfg.data.task} task "
                f"scores {', '.join(GOLD_DIMENSIONS)}"
            )
        if len(stage.lambdas) != index:
            raise ConfigError(
                f"{where}.lambdas: stage {index + 1} needs {index} λ values (one per earlier stage), got "
                f"{len(stage.lambdas)}"
            )
        for key in ("beta", "steps", "learning_rate", "min_gap", "pairs_per_prompt"):
            if getattr(stage, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {getattr(stage, key)}")
