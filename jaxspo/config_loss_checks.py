"""``loss``: every term resolves to a registered loss, its shared settings fit it, and ``loss.params`` becomes
the losses' typed params objects."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from typing import Any

from jaxspo.config_parsing import coerce, did_you_mean
from jaxspo.config_sections import LossConfig
from jaxspo.objectives import switches
from jaxspo.errors import ConfigError

log = logging.getLogger("jaxspo")


def resolve_loss(name: str, where: str) -> Any:
    """The registered loss ``name`` (importing a ``module:function`` name); ConfigError at ``where`` if there is
    none."""
    from jaxspo.losses import get_loss, loss_names  # late import: the registry fills as losses import

    try:
        return get_loss(name)
    except KeyError:
        raise ConfigError(f"{where}: unknown loss '{name}'{did_you_mean(name, loss_names())}") from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def build_loss_params(spec: Any, section: Any) -> Any:
    """``loss.params.<term>`` as the loss's params dataclass: known fields, typed values, values in range."""
    from jaxspo.losses import check_params, params_key

    fields = [field.name for field in dataclasses.fields(spec.params)]
    if isinstance(section, spec.params):
        params = section
    elif not isinstance(section, dict):
        raise ConfigError(f"{params_key(spec.name)}: expected a section with {', '.join(fields)}, got {section!r}")
    else:
        hints = typing.get_type_hints(spec.params)
        for key in section:
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ConfigError(
                    f"unknown config key '{params_key(spec.name, key)}'; {hint}{spec.name}'s params: "
                    f"{', '.join(fields)}"
                )
        values = {key: coerce(value, hints[key], params_key(spec.name, key)) for key, value in section.items()}
        try:
            params = spec.params(**values)
        except (TypeError, ValueError) as err:  # a check of the dataclass's own __post_init__
            raise ConfigError(f"{params_key(spec.name)}: {err}") from None
    try:
        check_params(spec.name, params)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return params


def typed_loss_params(loss: LossConfig) -> dict[str, Any]:
    """``loss.params`` with each section built as its loss's params dataclass, plus the defaults of every term that
    declares params but has no section. A section for a loss not in ``loss.terms`` is checked, then ignored with a
    warning (recipes may keep settings for terms an override swaps out)."""
    from jaxspo.losses import get_loss, params_key

    typed = {}
    for name, section in loss.params.items():
        spec = resolve_loss(name, params_key(name))
        if spec.params is None:
            raise ConfigError(
                f"{params_key(name)}: loss '{name}' declares no hyper-parameters (the shared ones are "
                "loss.beta, loss.label_smoothing); remove the section"
            )
        if name not in loss.terms:
            log.warning("%s is set but '%s' is not in loss.terms; its settings are unused", params_key(name), name)
        typed[name] = build_loss_params(spec, section)
    for name in loss.terms:
        spec = get_loss(name)
        if spec.params is not None and name not in typed:
            typed[name] = spec.params()
    return typed


def validate_loss(loss: LossConfig) -> None:
    """Every term resolves to a loss (importing ``module:function`` names), its shared settings fit it, and
    ``loss.params`` becomes typed params objects (:func:`typed_loss_params`). How the terms combine with the
    objective's other switches is checked by :func:`jaxspo.objectives.checks.validate_objective`."""
    for name in loss.terms:
        resolve_loss(name, "loss.terms")
    loss.params = typed_loss_params(loss)
    eps = loss.label_smoothing
    checks = [
        (0.0 <= eps < 1.0, f"loss.label_smoothing must be in [0, 1), got {eps}"),
        (
            "robust" not in loss.terms or eps < 0.5,
            f"loss.label_smoothing is robust's flip rate and must be below 0.5, got {eps}",
        ),
        (
            "exo_pair" not in loss.terms or eps > 0.0,
            "loss.label_smoothing must be > 0 for exo_pair (the EXO paper uses 1e-3)",
        ),
        (0.0 <= loss.ld_alpha <= 1.0, f"loss.ld_alpha must be in [0, 1], got {loss.ld_alpha}"),
        (
            loss.ld_alpha == 1.0 or loss.reference != "precomputed",
            "loss.ld_alpha < 1 weighs the reference's tokens in the step; "
            "use loss.reference: resident (or adapter_off), not precomputed",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_trl_options(loss)


def _validate_trl_options(loss: LossConfig) -> None:
    """WPO's weighting (``loss.wpo_weighting``) and TR-DPO's reference update (``loss.reference_sync``) fit the
    terms and the reference."""
    from jaxspo.losses import get_loss

    sync, sft = loss.reference_sync, loss.params.get("sft")
    sorting = sorted(set(loss.terms) & {"aot", "aot_unpaired"})
    reads_reference = any(get_loss(name).needs_reference for name in loss.terms) or switches.kl_active(loss)
    checks = [
        (
            not (loss.wpo_weighting and switches.uses_lists(loss)),
            "loss.wpo_weighting weighs pairs; it cannot be combined with list losses",
        ),
        (
            not (loss.wpo_weighting and sorting),
            f"loss.wpo_weighting cannot weigh {sorting[0] if sorting else ''}: it sorts the batch's margins, so "
            "per-pair weights would not line up (TRL refuses it too)",
        ),
        (
            not (loss.wpo_weighting and sft is not None and sft.token_mean == "batch"),
            "loss.wpo_weighting weighs each pair's own loss; set loss.params.sft.token_mean: pair",
        ),
        (sync.every_steps >= 0, f"loss.reference_sync.every_steps must be >= 0 (0 = off), got {sync.every_steps}"),
        (0.0 < sync.alpha <= 1.0, f"loss.reference_sync.alpha must be in (0, 1], got {sync.alpha}"),
        (
            not sync.every_steps or loss.reference == "resident",
            "loss.reference_sync updates the resident reference; it needs loss.reference: resident, "
            f"got {loss.reference}",
        ),
        (
            not sync.every_steps or reads_reference,
            "loss.reference_sync: no term of loss.terms reads the reference (nor loss.kl); set every_steps: 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
