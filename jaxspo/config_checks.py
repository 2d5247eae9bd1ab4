"""Cross-field checks of a built :class:`~jaxspo.config.Config`, each naming the offending key and what to do."""

from __future__ import annotations

import dataclasses

from jaxspo.config_loss_checks import validate_loss
from jaxspo.config_parsing import did_you_mean
from jaxspo.config_sections import HOST_HEAP_MODES, Config
from jaxspo.errors import ConfigError
from jaxspo.objectives import switches
from jaxspo.objectives.checks import validate_objective
from jaxspo.sharding_rules import DEFAULT_RULES, MESH_AXES

REFERENCE_MODES = ("resident", "precomputed", "none", "adapter_off")


def validate(cfg: Config) -> None:
    """Cross-field checks, each naming the offending key."""
    for ok, message in _field_checks(cfg) + _combination_checks(cfg):
        if not ok:
            raise ConfigError(message)
    validate_loss(cfg.loss)
    _validate_mesh_rules(cfg)
    _validate_buckets(cfg)
    _validate_context(cfg)  # first: the layout's width checks divide by mesh.context
    validate_objective(cfg)  # lists, selfsup, the KL regulariser, the packed layout, stages
    _validate_sections(cfg)


def _field_checks(cfg: Config) -> list[tuple[bool, str]]:
    """(holds, message if not) of the single-setting checks, in the order they are reported."""
    return [
        (cfg.trainer.batch_size > 0, "trainer.batch_size must be positive"),
        (cfg.trainer.grad_accum_steps > 0, "trainer.grad_accum_steps must be positive"),
        (
            cfg.trainer.batch_size % cfg.trainer.grad_accum_steps == 0,
            f"trainer.batch_size ({cfg.trainer.batch_size}) must divide by trainer.grad_accum_steps "
            f"({cfg.trainer.grad_accum_steps})",
        ),
        (cfg.trainer.steps >= 0 and cfg.trainer.sft_steps >= 0, "trainer.steps and trainer.sft_steps must be >= 0"),
        (cfg.loss.beta > 0, "loss.beta must be positive"),
        (bool(cfg.loss.terms), "loss.terms must name at least one loss"),
        (
            cfg.loss.reference in REFERENCE_MODES,
            f"loss.reference must be one of {', '.join(REFERENCE_MODES)}, got '{cfg.loss.reference}'",
        ),
        (
            cfg.optimizer.schedule in ("cosine", "linear", "constant"),
            f"optimizer.schedule must be cosine, linear or constant, got '{cfg.optimizer.schedule}'",
        ),
        (cfg.optimizer.learning_rate > 0, "optimizer.learning_rate must be positive"),
        (cfg.data.task == "synthetic", f"data.task: unknown task '{cfg.data.task}'; available: synthetic"),
        (cfg.data.max_prompt_length < cfg.data.max_length, "data.max_prompt_length must be below data.max_length"),
        (cfg.logging.log_every > 0, "logging.log_every must be positive"),
        (
            cfg.logging.peak_flops >= 0,
            f"logging.peak_flops must be >= 0 (FLOP/s per device; 0 = the device table), got {cfg.logging.peak_flops}",
        ),
        (
            cfg.trainer.host_heap in HOST_HEAP_MODES,
            f"trainer.host_heap must be one of {', '.join(HOST_HEAP_MODES)}, got '{cfg.trainer.host_heap}'",
        ),
        (
            cfg.trainer.on_nonfinite in ("stop", "skip"),
            f"trainer.on_nonfinite must be 'stop' or 'skip', got '{cfg.trainer.on_nonfinite}'",
        ),
        (
            cfg.data.on_bad_row in ("error", "skip"),
            f"data.on_bad_row must be 'error' or 'skip', got '{cfg.data.on_bad_row}'",
        ),
        (cfg.data.workers >= 0, f"data.workers must be >= 0, got {cfg.data.workers}"),
        (cfg.data.prefetch >= 0, f"data.prefetch must be >= 0, got {cfg.data.prefetch}"),
        (cfg.checkpoint.keep_last >= 1, "checkpoint.keep_last must be at least 1"),
        (
            cfg.checkpoint.every_steps >= 0 and cfg.checkpoint.every_seconds >= 0,
            "checkpoint.every_steps and every_seconds must be >= 0",
        ),
        *(
            (getattr(cfg.eval, key) >= 1, f"eval.{key} must be at least 1, got {getattr(cfg.eval, key)}")
            for key in ("num_pairs", "num_prompts", "max_new_tokens")
        ),
    ]


def _combination_checks(cfg: Config) -> list[tuple[bool, str]]:
    """(holds, message if not) of the checks of settings that must agree across sections."""
    return [
        (
            cfg.loss.reference != "adapter_off" or cfg.lora.enabled,
            "loss.reference 'adapter_off' needs LoRA adapters (set lora.rank > 0)",
        ),
        (
            not (cfg.lora.enabled and cfg.loss.reference_sync.every_steps),
            "loss.reference_sync is not supported with LoRA adapters (the policy is the base plus adapters, the "
            "reference the base or a full copy); set lora.rank=0 or loss.reference_sync.every_steps=0",
        ),
        (
            not (switches.staged(cfg) and cfg.loss.reference_sync.every_steps),
            "loss.reference_sync is not supported with stages (each stage's reference log-probs are precomputed); "
            "set loss.reference_sync.every_steps=0",
        ),
    ]


def _validate_mesh_rules(cfg: Config) -> None:
    """``mesh.rules`` maps known logical axes onto known mesh axes."""
    unknown_rules = set(cfg.mesh.rules) - set(DEFAULT_RULES)
    for rule, axes in cfg.mesh.rules.items():
        for axis in [axes] if isinstance(axes, str) or axes is None else axes:
            if axis is not None and axis not in MESH_AXES:
                raise ConfigError(f"mesh.rules.{rule}: unknown mesh axis '{axis}'; valid axes: {MESH_AXES}")
    if unknown_rules:
        key = sorted(unknown_rules)[0]
        raise ConfigError(f"mesh.rules: unknown logical axis '{key}'{did_you_mean(key, list(DEFAULT_RULES))}")


def _validate_buckets(cfg: Config) -> None:
    """``data.buckets`` (given widths) and ``data.auto_buckets`` (widths picked from the data), not both."""
    packed = switches.packed(cfg.data)
    buckets, longest = cfg.data.buckets, cfg.data.max_length * (2 if packed else 1)
    if any(b < 2 for b in buckets) or buckets != sorted(set(buckets)) or (buckets and buckets[-1] > longest):
        what = "2·data.max_length" if packed else "data.max_length"
        raise ConfigError(f"data.buckets must be ascending distinct lengths in [2, {what}={longest}], got {buckets}")
    auto = cfg.data.auto_buckets
    if auto < 0:
        raise ConfigError(f"data.auto_buckets must be ≥ 0 (0 = off), got {auto}")
    if auto and buckets:
        raise ConfigError(
            f"data.auto_buckets={auto} picks the bucket widths itself; set data.buckets=[] (got {buckets}) "
            "or data.auto_buckets=0"
        )


def _validate_sections(cfg: Config) -> None:
    """The sections' own checks (model, synthetic task, data source, LoRA) and LoRA's targets."""
    model_to_check = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or 1)  # 0 = tokenizer's
    for section in (model_to_check, cfg.data.synthetic, cfg.data.source, cfg.lora):
        try:
            section.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.lora.enabled and not cfg.model.path:  # with model.path the architecture is known once config.json is read
        from jaxspo.lora.adapters import chosen_projections  # imports jax: only for a LoRA recipe

        try:
            chosen_projections(cfg.model, cfg.lora)
        except ValueError as err:
            raise ConfigError(str(err)) from None


def _validate_context(cfg: Config) -> None:
    """``mesh.context`` = c > 1 splits every sequence over c devices: the given widths must divide by c and a
    rule must map a logical axis onto ``context`` (widths taken from the data are rounded up to multiples of c)."""
    c = cfg.mesh.context
    if c < 1:
        raise ConfigError(f"mesh.context must be ≥ 1 (devices splitting each sequence; 1 = off), got {c}")
    if c == 1:
        return
    if cfg.data.max_length % c:
        raise ConfigError(
            f"data.max_length ({cfg.data.max_length}) must divide by mesh.context ({c}): each "
            f"sequence splits over {c} devices"
        )
    uneven = [b for b in cfg.data.buckets if b % c]
    if uneven:
        raise ConfigError(
            f"data.buckets {uneven} must divide by mesh.context ({c}): each batch width splits over {c} devices"
        )
    if not any("context" in ([axes] if isinstance(axes, str) else axes or []) for axes in cfg.mesh.rules.values()):
        raise ConfigError(
            f"mesh.context={c} but no mesh.rules entry maps onto 'context'; set mesh.rules.length=context"
        )
