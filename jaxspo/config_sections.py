"""The dataclasses of a run's configuration, one per YAML section; :class:`Config` is the whole run.

Sections defined beside the code they configure (``model``, ``lora``, ``data.source``, ``data.synthetic``,
``loss.kl``, ``loss.selfsup``) come from plain-Python modules, so reading a config imports no jax.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxspo.data.settings import SourceConfig
from jaxspo.data.synthetic_config import SyntheticTaskConfig
from jaxspo.losses.kl_config import KLConfig
from jaxspo.losses.selfsup_config import SelfsupConfig
from jaxspo.models.config import ModelConfig
from jaxspo.lora.config import LoRAConfig
from jaxspo.sharding_rules import DEFAULT_RULES


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
    # preference step rows: "padded" (chosen, rejected) or "packed" (prompt once per pair; jaxspo/data/layout.py)
    layout: str = "padded"
    pack_pairs: bool = (
        False  # with layout: packed, several pairs per row (no padding per pair; jaxspo/data/pair_packing.py)
    )
    pack_width: int = (
        0  # pack_pairs: slots per row (a multiple of 8 and mesh.context, ≥ the longest pair); 0 = the longest pair
    )
    # pack_pairs: row counts a batch may take (one compiled program each): one pair per row + K−1 fitted to the data
    pack_row_buckets: int = 4


@dataclasses.dataclass
class ReferenceSyncConfig:
    """TR-DPO's reference update (Gorbatovski et al., arXiv 2404.09656; TRL's ``sync_ref_model``): after every
    ``every_steps``-th step, π_ref ← α·πθ + (1 − α)·π_ref, on the resident reference inside the step."""

    every_steps: int = 0  # τ (TRL ref_model_sync_steps); 0 = off, a fixed reference
    alpha: float = 0.6  # α in (0, 1] (TRL ref_model_mixup_alpha, same default); 1 = the hard update π_ref ← πθ


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
    # LD-DPO's α in [0, 1] (TRL ld_alpha): response tokens past the pair's shorter length weigh α in the policy's and
    # the reference's log-probs; 1 = off
    ld_alpha: float = 1.0
    # WPO (TRL use_weighting): each pair's loss × exp(mean_t log p(y_t) − log Σ_v p(v)²) of both responses under the
    # policy, without gradient
    wpo_weighting: bool = False
    reference_sync: ReferenceSyncConfig = dataclasses.field(
        default_factory=ReferenceSyncConfig
    )  # TR-DPO: the reference moves toward the policy every τ steps
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


HOST_HEAP_MODES = ("system", "hold")  # trainer.host_heap


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
    # JAX's persistent compilation cache: "auto" = ~/.cache/jaxspo/xla on TPU/GPU, off on CPU; a path; "" = off
    compilation_cache_dir: str = "auto"
    # "hold": glibc keeps freed memory mapped between XLA:CPU steps (faster on CPU, more RSS; docs/speed.md)
    host_heap: str = "system"


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
    """One stage n of a ``sequential`` recipe (docs/losses.md, Sequential; jaxspo/train/stages.py), in ``stages``
    order."""

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
