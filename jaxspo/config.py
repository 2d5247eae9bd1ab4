"""Typed run configuration: dataclasses, YAML recipes with ``extends``, dotted CLI overrides.

``load_config("configs/demo.yaml", ["trainer.steps=50", "run_dir=/tmp/r"])`` reads the YAML (and the
files it ``extends``, merged depth-first), applies the overrides, and builds :class:`Config`. Unknown
keys and wrong types raise :class:`ConfigError` naming the key and suggesting the closest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxspo.data.layout import LAYOUTS
from jaxspo.data.sources import SourceConfig
from jaxspo.data.synthetic import GOLD_DIMENSIONS, SyntheticTaskConfig
from jaxspo.errors import ConfigError
from jaxspo.host_memory import HOST_HEAP_MODES
from jaxspo.losses.kl_config import KLConfig
from jaxspo.losses.selfsup import SelfsupConfig
from jaxspo.models.decoder import ModelConfig
from jaxspo.lora.adapters import LoRAConfig, chosen_projections
from jaxspo.moved_keys import reject_moved_keys
from jaxspo.sharding import DEFAULT_RULES, MESH_AXES

log = logging.getLogger("jaxspo")


REFERENCE_MODES = ("resident", "precomputed", "none", "adapter_off")


@dataclasses.dataclass
class DataConfig:
    """Where preference data comes from and its token budget."""

    task: str = "synthetic"  # the built-in task (used when source.kind is synthetic)
    synthetic: SyntheticTaskConfig = dataclasses.field(default_factory=SyntheticTaskConfig)
    source: SourceConfig = dataclasses.field(default_factory=SourceConfig)  # jsonl / parquet / hf_disk / tfds files
    max_length: int = 32  # tokens per prompt+response row (right-padded, static shape)
    max_prompt_length: int = 16  # prompts keep their last this-many tokens; also the sampling prompt width
    buckets: list[int] = dataclasses.field(
        default_factory=list
    )  # padded lengths (ascending, ≤ max_length); [] = max_length only
    auto_buckets: int = (
        0  # > 0: pick ≤ this many bucket widths from the data's lengths (jaxspo/data/bucketing.py); needs buckets: []
    )
    on_bad_row: str = "error"  # a malformed data row: "error" (stop, naming it) or "skip" (count it)
    workers: int = 1  # grain reader threads of the training batch pipeline (0 = read in the training thread)
    prefetch: int = 2  # batches grain reads ahead (0 = none)
    spill_dir: str = ""  # local dir: encoded train/SFT rows go to memory-mapped .npy files there; "" = host memory
    layout: str = "padded"  # preference step rows: "padded" (chosen, rejected) or "packed" (prompt once per pair; jaxspo/data/layout.py)
    pack_pairs: bool = (
        False  # with layout: packed, several pairs per row (no padding per pair; jaxspo/data/pair_packing.py)
    )
    pack_width: int = (
        0  # pack_pairs: slots per row (a multiple of 8 and mesh.context, ≥ the longest pair); 0 = the longest pair
    )
    pack_row_buckets: int = 4  # pack_pairs: row counts a batch may take (one compiled program each): one pair per row + K−1 fitted to the data


@dataclasses.dataclass
class LossConfig:
    """Preference objective: a weighted sum of registered losses (``terms``: name → weight).

    A name is a built-in (see docs/losses.md), one registered with ``@register_loss``, or
    ``"package.module:function"`` (imported when the config is validated). ``beta``, ``label_smoothing``
    and ``reference`` are shared; a loss's own hyper-parameters are ``params.<term>.<field>``, typed by the
    dataclass it registers (``@register_loss(..., params=...)``; defaults follow TRL or the paper). After
    validation ``params`` maps every such term to its params object.
    """

    terms: dict[str, float] = dataclasses.field(default_factory=lambda: {"dpo": 1.0})
    beta: float = 0.1  # DPO temperature β (IPO's τ; SimPO's β, ~2 in its paper); rewards are β·log(πθ/π_ref)
    # "resident": frozen copy inside the step; "precomputed": one cached pass; "none": reference-free (π_ref ≡ 1);
    # "adapter_off": the LoRA base without adapters
    reference: str = "resident"
    reference_cache_dir: str = (
        "~/.cache/jaxspo/reference_logps"  # precomputed reference log-probs, keyed by data/weights/tokenizer hashes
    )
    label_smoothing: float = (
        0.0  # ε: cdpo, aot, aot_unpaired in [0, 1); robust flip rate in [0, 0.5); exo_pair > 0 (paper 1e-3)
    )
    params: dict[str, Any] = dataclasses.field(
        default_factory=dict
    )  # term name → its hyper-parameters (loss.params.simpo.gamma)
    kl: KLConfig = dataclasses.field(
        default_factory=KLConfig
    )  # the global KL regulariser β_KL·KL(πθ ‖ π_ref); any loss may add it
    selfsup: SelfsupConfig = dataclasses.field(
        default_factory=SelfsupConfig
    )  # + λ·preference-degree loss (weight 0 = off)


@dataclasses.dataclass
class OptimizerConfig:
    """AdamW with linear warm-up then cosine/linear decay (or constant), and global-norm clipping."""

    learning_rate: float = 5e-4
    warmup_steps: int = 10
    schedule: str = "cosine"  # cosine | linear | constant
    min_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 disables clipping


@dataclasses.dataclass
class MeshConfig:
    """Device mesh (axes data, fsdp, tensor, context; one of data/fsdp/tensor may be -1 = all remaining
    devices) and rules. ``context`` devices split each sequence's time axis (docs/sharding.md: Context parallelism)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    context: int = 1
    rules: dict[str, str | list[str] | None] = dataclasses.field(default_factory=lambda: dict(DEFAULT_RULES))

    def shape(self) -> dict[str, int]:
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor, "context": self.context}

    def width_multiple(self) -> int:
        """Batch widths chosen from the data (packed rows, auto buckets) are multiples of this: 8 and ``context``."""
        return math.lcm(8, self.context)


@dataclasses.dataclass
class TrainerConfig:
    """Phases and step counts. Batch sizes are global (pairs per optimizer step)."""

    seed: int = 0
    sft_steps: int = 300  # supervised warm start on the sft split; its result is the reference
    sft_batch_size: int = 32
    sft_learning_rate: float = 2e-3
    steps: int = 200  # preference optimisation steps
    batch_size: int = 32
    grad_accum_steps: int = 1  # micro-batches per step (batch_size must divide by it)
    eval_every: int = 100  # 0: only before and after
    on_nonfinite: str = "stop"  # non-finite loss/gradient: "stop" the run or "skip" the update
    precompile: bool = True  # compile the step for every bucket width before step 1 (docs/speed.md)
    compilation_cache_dir: str = (
        ""  # JAX's persistent compilation cache, e.g. ~/.cache/jaxspo/xla ("" = off; docs/speed.md)
    )
    host_heap: str = "system"  # "hold": glibc keeps freed memory mapped between XLA:CPU steps (faster on CPU, more RSS; docs/speed.md)


@dataclasses.dataclass
class EvalConfig:
    """Held-out evaluation: pair metrics plus sampled responses scored by the gold rewards."""

    num_pairs: int = 256
    num_prompts: int = 128
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


@dataclasses.dataclass
class CheckpointConfig:
    """Orbax checkpoints of the whole train state and data position; resume and preemption."""

    save_final: bool = True  # final policy params under RUN_DIR/params
    every_steps: int = 100  # save every N optimizer steps (0 = off)
    every_seconds: float = 0.0  # and/or when this many seconds passed since the last save (0 = off)
    keep_last: int = 2  # most recent checkpoints kept per phase
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple of this (0 = off)
    async_save: bool = True  # write in the background while training continues
    resume: bool = True  # continue from the latest valid checkpoint in run_dir
    preemption_grace_seconds: float = 120.0  # after SIGTERM/SIGINT: save and exit within this time
    export_hf_dir: str = ""  # also write the final policy here as a Hugging Face folder ("" = don't)
    export_dtype: str = ""  # dtype of exported weights, e.g. bfloat16 ("" = the parameters' dtype)
    export_max_shard_size: str = "5GB"  # exports above this are split into shards plus an index


@dataclasses.dataclass
class LoggingConfig:
    """Metrics sinks; metrics.jsonl is always written."""

    log_every: int = 10
    tensorboard: bool = True
    wandb: bool = False  # also log to Weights & Biases (needs the wandb package; not a dependency)
    wandb_project: str = "jaxspo"
    progress_bar: bool = True  # tqdm bar per phase with loss, tokens/s and the ETA
    plot: bool = True
    peak_flops: float = (
        0.0  # perf/mfu's peak FLOP/s per device (per process on CPU); 0 = the device table, or measured on CPU
    )


@dataclasses.dataclass
class StageConfig:
    """One stage n of a ``sequential`` recipe (docs/losses.md, Sequential; jaxspo/train/stages.py), in ``stages`` order."""

    dimension: str = ""  # the scored dimension whose differences label this stage's pairs (e.g. correctness)
    beta: float = 0.0  # β_n; 0 = loss.beta
    lambdas: list[float] = dataclasses.field(default_factory=list)  # λ_{n,i}, one per earlier stage i (stage 1: [])
    steps: int = 0  # optimizer steps of the stage; 0 = trainer.steps
    learning_rate: float = 0.0  # peak learning rate of the stage; 0 = optimizer.learning_rate
    min_gap: float = 0.0  # a pair needs |score difference| >= min_gap (equal scores are always dropped)
    pairs_per_prompt: int = 1  # pairs drawn per prompt from its responses; 0 = every pair whose scores differ


@dataclasses.dataclass
class Config:
    """A whole run."""

    run_dir: str = ""  # default: runs/<config name>-<UTC timestamp>
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)  # rank 0: full fine-tuning
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    stages: list[StageConfig] = dataclasses.field(default_factory=list)  # non-empty: a sequential recipe


# ---------------------------------------------------------------------------------------------
# Reading YAML
# ---------------------------------------------------------------------------------------------


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads one recipe, merging the file it ``extends`` (relative to it) underneath."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself via {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base = _read_yaml(path.parent / str(base_name), seen + (path,))
    return _deep_merge(base, raw)


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_KEY_PART = r'"[^"]+"|[^".=]+'  # one dotted-key part: a name, or a "quoted name" that may hold dots (pkg.mod:fn)


def _split_key(key: str, override: str) -> list[str]:
    """``loss.params."pkg.mod:fn".shift`` → ``["loss", "params", "pkg.mod:fn", "shift"]``."""
    if not re.fullmatch(rf"(?:{_KEY_PART})(?:\.(?:{_KEY_PART}))*", key):
        raise ConfigError(
            f"override '{override}': malformed key '{key}' (dotted names; quote a name that holds dots: loss.params.\"pkg.mod:fn\".x=1)"
        )
    return [part.strip('"') for part in re.findall(_KEY_PART, key)]


def _apply_override(tree: dict[str, Any], override: str, defaults: dict[str, Any]) -> None:
    """Sets ``a.b.c=value`` in ``tree``; the value is parsed as YAML (``3``, ``1e-4``, ``[1,2]``).

    A section missing from ``tree`` starts from its ``defaults``, so ``loss.terms.sft=0.2`` adds a
    term to the default terms instead of replacing them. A part holding dots is quoted:
    ``loss.params."pkg.mod:fn".shift=0.5``.
    """
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{override}' is not of the form key=value (e.g. trainer.steps=50)")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node, default = tree, defaults
    parts = _split_key(key.strip(), override)
    for part in parts[:-1]:
        default = default.get(part) if isinstance(default, dict) else None
        child = node.setdefault(part, copy.deepcopy(default) if isinstance(default, dict) else {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Building typed dataclasses
# ---------------------------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against annotation ``tp`` (builds nested dataclasses); raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, key_tp, where): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from None


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Builds and validates a :class:`Config` from a plain nested mapping."""
    reject_moved_keys(tree)
    cfg = _build(Config, tree)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Reads a YAML recipe (or none: the defaults) and applies dotted ``key=value`` overrides."""
    tree = _read_yaml(Path(path)) if path else {}
    defaults = to_dict(Config())
    for override in overrides:
        _apply_override(tree, override, defaults)
    try:
        return config_from_dict(tree)
    except ConfigError as err:
        if not path or str(Path(path).resolve()) in str(err):
            raise
        raise ConfigError(
            f"{err} (config {Path(path).resolve()}{' with its overrides' if overrides else ''})"
        ) from None


def validate(cfg: Config) -> None:
    """Cross-field checks, each naming the offending key."""
    checks = [
        (cfg.trainer.batch_size > 0, "trainer.batch_size must be positive"),
        (cfg.trainer.grad_accum_steps > 0, "trainer.grad_accum_steps must be positive"),
        (
            cfg.trainer.batch_size % cfg.trainer.grad_accum_steps == 0,
            f"trainer.batch_size ({cfg.trainer.batch_size}) must divide by trainer.grad_accum_steps ({cfg.trainer.grad_accum_steps})",
        ),
        (cfg.trainer.steps >= 0 and cfg.trainer.sft_steps >= 0, "trainer.steps and trainer.sft_steps must be >= 0"),
        (cfg.loss.beta > 0, "loss.beta must be positive"),
        (bool(cfg.loss.terms), "loss.terms must name at least one loss"),
        (
            cfg.loss.reference in REFERENCE_MODES,
            f"loss.reference must be one of {', '.join(REFERENCE_MODES)}, got '{cfg.loss.reference}'",
        ),
        (
            cfg.loss.reference != "adapter_off" or cfg.lora.enabled,
            "loss.reference 'adapter_off' needs LoRA adapters (set lora.rank > 0)",
        ),
        (
            not (cfg.lora.enabled and cfg.loss.selfsup.weight),
            "loss.selfsup.weight: selfsup is not supported with LoRA adapters yet (its held-out per-level metric scores full parameters); set lora.rank=0",
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
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _validate_loss(cfg.loss)
    try:
        cfg.loss.kl.validate(cfg.loss.reference, cfg.trainer.grad_accum_steps)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _validate_stages(cfg)
    unknown_rules = set(cfg.mesh.rules) - set(DEFAULT_RULES)
    for rule, axes in cfg.mesh.rules.items():
        for axis in [axes] if isinstance(axes, str) or axes is None else axes:
            if axis is not None and axis not in MESH_AXES:
                raise ConfigError(f"mesh.rules.{rule}: unknown mesh axis '{axis}'; valid axes: {MESH_AXES}")
    if unknown_rules:
        key = sorted(unknown_rules)[0]
        raise ConfigError(f"mesh.rules: unknown logical axis '{key}'{_suggest(key, list(DEFAULT_RULES))}")
    model_to_check = dataclasses.replace(cfg.model, vocab_size=cfg.model.vocab_size or 1)  # 0 = tokenizer's
    buckets, longest = cfg.data.buckets, cfg.data.max_length * (2 if cfg.data.layout == "packed" else 1)
    if any(b < 2 for b in buckets) or buckets != sorted(set(buckets)) or (buckets and buckets[-1] > longest):
        what = "2·data.max_length" if cfg.data.layout == "packed" else "data.max_length"
        raise ConfigError(f"data.buckets must be ascending distinct lengths in [2, {what}={longest}], got {buckets}")
    auto = cfg.data.auto_buckets
    if auto < 0:
        raise ConfigError(f"data.auto_buckets must be ≥ 0 (0 = off), got {auto}")
    if auto and buckets:
        raise ConfigError(
            f"data.auto_buckets={auto} picks the bucket widths itself; set data.buckets=[] (got {buckets}) or data.auto_buckets=0"
        )
    _validate_context(cfg)  # first: the layout's width checks divide by mesh.context
    _validate_layout(cfg)
    for section in (model_to_check, cfg.data.synthetic, cfg.data.source, cfg.lora):
        try:
            section.validate()
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if cfg.lora.enabled and not cfg.model.path:  # with model.path the architecture is known once config.json is read
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
            f"data.max_length ({cfg.data.max_length}) must divide by mesh.context ({c}): each sequence splits over {c} devices"
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


def _validate_layout(cfg: Config) -> None:
    """``data.layout: packed`` serves the pair losses' own log-probs; the paths that read padded rows refuse it."""
    if cfg.data.layout not in LAYOUTS:
        raise ConfigError(f"data.layout must be one of {', '.join(LAYOUTS)}, got '{cfg.data.layout}'")
    _validate_pack_pairs(cfg)
    if cfg.data.layout == "padded":
        return
    from jaxspo.losses import get_loss  # late import, as in _validate_loss

    refused = [
        (
            "list" in {get_loss(name).layout for name in cfg.loss.terms},
            "loss.terms: list losses (soft_spo_best_of_n, soft_spo_ranked) read ranked lists",
        ),
        (cfg.loss.selfsup.weight > 0, "loss.selfsup.weight: the degree loss scores padded degraded copies"),
        (cfg.loss.kl.beta > 0, "loss.kl.beta: the KL regulariser's step is built for padded rows"),
        (bool(cfg.stages), "stages: sequential recipes"),
    ]
    for bad, what in refused:
        if bad:
            raise ConfigError(f"data.layout: 'packed' is not supported here ({what}); set data.layout=padded")


def _validate_pack_pairs(cfg: Config) -> None:
    """``data.pack_pairs`` and its knobs: packed rows, a fixed width (no length buckets), whole pairs per row."""
    data, multiple = cfg.data, cfg.mesh.width_multiple()
    if data.pack_width < 0 or data.pack_width % multiple:
        raise ConfigError(
            f"data.pack_width must be 0 (= the longest pair) or a positive multiple of {multiple} (8 and mesh.context), got {data.pack_width}"
        )
    if data.pack_row_buckets < 1:
        raise ConfigError(
            f"data.pack_row_buckets must be ≥ 1 (row counts compiled per run), got {data.pack_row_buckets}"
        )
    if not data.pack_pairs:
        if data.pack_width:
            raise ConfigError(
                f"data.pack_width={data.pack_width} is read only with data.pack_pairs=true; set data.pack_pairs=true or data.pack_width=0"
            )
        return
    if data.layout != "packed":
        raise ConfigError(
            f"data.pack_pairs=true packs pair rows of data.layout=packed (got '{data.layout}'); set data.layout=packed"
        )
    if data.buckets or data.auto_buckets:
        raise ConfigError(
            "data.pack_pairs=true fills rows of one width (data.pack_width), so it takes no length buckets; set data.buckets=[] and data.auto_buckets=0"
        )


def _resolve_loss(name: str, where: str) -> Any:
    """The registered loss ``name`` (importing a ``module:function`` name); ConfigError at ``where`` if there is none."""
    from jaxspo.losses import get_loss, loss_names  # late import: the registry fills as losses import

    try:
        return get_loss(name)
    except KeyError:
        raise ConfigError(f"{where}: unknown loss '{name}'{_suggest(name, loss_names())}") from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _build_params(spec: Any, section: Any) -> Any:
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
                    f"unknown config key '{params_key(spec.name, key)}'; {hint}{spec.name}'s params: {', '.join(fields)}"
                )
        values = {key: _coerce(value, hints[key], params_key(spec.name, key)) for key, value in section.items()}
        try:
            params = spec.params(**values)
        except (TypeError, ValueError) as err:  # a check of the dataclass's own __post_init__
            raise ConfigError(f"{params_key(spec.name)}: {err}") from None
    try:
        check_params(spec.name, params)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return params


def _typed_loss_params(loss: LossConfig) -> dict[str, Any]:
    """``loss.params`` with each section built as its loss's params dataclass, plus the defaults of every term that
    declares params but has no section. A section for a loss not in ``loss.terms`` is checked, then ignored with a
    warning (recipes may keep settings for terms an override swaps out)."""
    from jaxspo.losses import get_loss, params_key

    typed = {}
    for name, section in loss.params.items():
        spec = _resolve_loss(name, params_key(name))
        if spec.params is None:
            raise ConfigError(
                f"{params_key(name)}: loss '{name}' declares no hyper-parameters (the shared ones are loss.beta, loss.label_smoothing); remove the section"
            )
        if name not in loss.terms:
            log.warning("%s is set but '%s' is not in loss.terms; its settings are unused", params_key(name), name)
        typed[name] = _build_params(spec, section)
    for name in loss.terms:
        spec = get_loss(name)
        if spec.params is not None and name not in typed:
            typed[name] = spec.params()
    return typed


def _validate_loss(loss: LossConfig) -> None:
    """Every term resolves to a loss (importing ``module:function`` names), its shared settings fit it, and
    ``loss.params`` becomes typed params objects (:func:`_typed_loss_params`)."""
    from jaxspo.losses import get_loss

    for name in loss.terms:
        _resolve_loss(name, "loss.terms")
    loss.params = _typed_loss_params(loss)
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
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    layouts = {name: get_loss(name).layout for name in loss.terms}
    if len(set(layouts.values())) > 1:
        raise ConfigError(
            f"loss.terms: list losses and pair losses cannot be combined (they read different data): {layouts}"
        )
    try:
        loss.selfsup.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if loss.selfsup.weight and "list" in layouts.values():
        raise ConfigError(
            "loss.selfsup.weight: the degree loss degrades pairs' responses; it cannot be combined with list losses (soft_spo_best_of_n, soft_spo_ranked)"
        )


def _validate_stages(cfg: Config) -> None:
    """A ``stages`` recipe: one λ per earlier stage, known dimensions, the ``sequential`` loss, cached logps."""
    if not cfg.stages:
        if "sequential" in cfg.loss.terms:
            raise ConfigError(
                "loss.terms: 'sequential' needs a 'stages' list (its offsets come from the earlier stages' policies)"
            )
        return
    if set(cfg.loss.terms) != {"sequential"}:
        raise ConfigError(
            f"loss.terms: a 'stages' recipe trains every stage with the sequential loss; set loss.terms={{sequential: 1.0}}, got {list(cfg.loss.terms)}"
        )
    if cfg.model.reference_path:
        raise ConfigError(
            "model.reference_path: a 'stages' recipe's references are its own policies (π_0 = the SFT result); leave it empty"
        )
    modes = (
        ("precomputed", "adapter_off") if cfg.lora.enabled else ("precomputed",)
    )  # adapter_off: π_(n-1) = stage n's adapter off
    if cfg.loss.reference not in modes:
        raise ConfigError(
            f"loss.reference: a 'stages' recipe's reference is π_(n-1); set loss.reference to {' or '.join(modes)}, got '{cfg.loss.reference}'"
        )
    for index, stage in enumerate(cfg.stages):
        where = f"stages[{index}]"
        if stage.dimension not in GOLD_DIMENSIONS:
            raise ConfigError(
                f"{where}.dimension: unknown dimension '{stage.dimension}'; the {cfg.data.task} task scores {', '.join(GOLD_DIMENSIONS)}"
            )
        if len(stage.lambdas) != index:
            raise ConfigError(
                f"{where}.lambdas: stage {index + 1} needs {index} λ values (one per earlier stage), got {len(stage.lambdas)}"
            )
        for key in ("beta", "steps", "learning_rate", "min_gap", "pairs_per_prompt"):
            if getattr(stage, key) < 0:
                raise ConfigError(f"{where}.{key} must be >= 0, got {getattr(stage, key)}")


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (for writing the resolved config)."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config, path: Path) -> None:
    """Writes the resolved config, loadable again with :func:`load_config`."""
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
