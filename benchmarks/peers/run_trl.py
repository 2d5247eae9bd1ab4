"""TRL runner (its own venv): ``trl.DPOTrainer`` on the fixture's text pairs, on the CPU.

    python benchmarks/peers/run_trl.py --fixture DIR --order ORDER.json --config
        trl_fp32|trl_fp32_precomputed|trl_defaults

``trl_fp32``: fp32, no gradient checkpointing, the reference forward in every step; ``trl_fp32_precomputed``:
the same with ``precompute_ref_log_probs`` (one pass before training, counted in the time to first step);
``trl_defaults``: DPOConfig's defaults for precision and memory (bf16 autocast, gradient checkpointing).
All: dynamic padding to the longest row of the batch, the rows in ``--order`` with a sequential sampler,
constant learning rate, no warm-up, no clipping. A step is timed between consecutive ``on_step_end``
callbacks (the first from the start of ``train()``); PyTorch on the CPU is synchronous.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_common import StepLog, emit, parser, read_jsonl, read_order  # noqa: E402

CONFIGS = {
    "trl_fp32": {"bf16": False, "gradient_checkpointing": False},
    "trl_fp32_precomputed": {"bf16": False, "gradient_checkpointing": False, "precompute_ref_log_probs": True},
    "trl_defaults": {},
}


def dpo_config(args, output_dir: str):
    """TRL's ``DPOConfig`` for ``args.config`` (one of :data:`CONFIGS`): the shared optimiser, schedule and loss."""
    from trl import DPOConfig

    return DPOConfig(
        output_dir=output_dir,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.lr,
        adam_beta1=args.b1,
        adam_beta2=args.b2,
        adam_epsilon=args.eps,
        weight_decay=args.weight_decay,
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        beta=args.beta,
        loss_type=["sigmoid"],
        max_length=args.max_length,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        **CONFIGS[args.config],
    )


def step_timer(log: StepLog, tokens: list[tuple[int, int, int]]):
    """A ``TrainerCallback`` that ends a step in ``log`` when its loss is logged, with the step's wall seconds
    (between consecutive ``on_step_end`` calls) and its ``(real, padded, width)`` tokens popped from ``tokens``."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.last = time.perf_counter()
            self.seconds: float | None = None  # of the step that ended and awaits its logged loss

        def on_train_begin(self, *a, **k):
            self.last = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            self.seconds, self.last = now - self.last, now

        def on_log(self, a, state, control, logs=None, **k):
            if self.seconds is not None and logs and "loss" in logs:
                log.end_step(self.seconds, *tokens.pop(0), float(logs["loss"]))
                self.seconds = None

    return StepTimes()


def counting_trainer(tokens: list[tuple[int, int, int]]):
    """A ``DPOTrainer`` subclass that appends each training batch's (real, padded, width) tokens to ``tokens``."""
    from trl import DPOTrainer

    class CountingTrainer(DPOTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.model.training:
                mask = inputs["attention_mask"]
                tokens.append((int(mask.sum()), int(mask.numel()), int(mask.shape[1])))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return CountingTrainer


def main() -> None:
    args = parser(__doc__).parse_args()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rows = read_jsonl(args.fixture / "train.jsonl")
    order = read_order(args.order, args.steps, args.batch_size)
    dataset = Dataset.from_list([rows[r] for batch in order for r in batch])
    model_dir = str(args.fixture / "model")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    log = StepLog()
    tokens: list[tuple[int, int, int]] = []  # (real, padded, width) per collated batch, in order
    with tempfile.TemporaryDirectory(prefix="bench-trl-") as tmp:
        config = dpo_config(args, tmp)
        trainer = counting_trainer(tokens)(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[step_timer(log, tokens)],
        )
        trainer.train()
    emit(
        "trl",
        args.config,
        log,
        "precompute_ref_log_probs" not in CONFIGS[args.config],
        {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "bf16": bool(config.bf16),
            "gradient_checkpointing": bool(config.gradient_checkpointing),
        },
    )


if __name__ == "__main__":
    main()
