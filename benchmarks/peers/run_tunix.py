"""Tunix runner (its own venv): ``tunix.sft.dpo.DPOTrainer`` on the fixture's pre-tokenised pairs.

    python benchmarks/peers/run_tunix.py --fixture DIR --order ORDER.json --config tunix_fp32|tunix_bf16

Tunix's DPO takes left-padded prompts and right-padded responses (its only layout): prompts are padded
to ``max_length // 2`` and responses to ``max_length // 2``, so every row computes ``max_length`` positions.
The policy and the reference are both loaded from the HF folder with Tunix's Llama 3 safetensors loader
(``--config tunix_bf16``: bf16 weights). Each step is timed from the end of the previous one (Tunix
prepares the batch and runs the reference forward outside its jitted step) to its loss being ready.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_common import StepLog, emit, parser, read_jsonl, read_order  # noqa: E402


def padded(rows: list[list[int]], width: int, pad: int, left: bool):
    """``[N, width]`` ids and mask (int32), padded on the left or the right."""
    import numpy as np

    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        if len(r) > width:
            raise ValueError(f"row {i}: {len(r)} tokens exceed Tunix's width {width}")
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl], mask[i, sl] = r, 1
    return ids, mask


def model_config(hf: dict):
    """Tunix's Llama 3 ``ModelConfig`` from the HF folder's ``config.json`` fields."""
    from tunix.models.llama3 import model as llama

    return llama.ModelConfig(
        num_layers=hf["num_hidden_layers"],
        vocab_size=hf["vocab_size"],
        embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"],
        num_heads=hf["num_attention_heads"],
        head_dim=hf["hidden_size"] // hf["num_attention_heads"],
        num_kv_heads=hf["num_key_value_heads"],
        rope_theta=int(hf["rope_parameters"]["rope_theta"] if "rope_parameters" in hf else hf["rope_theta"]),
        norm_eps=hf["rms_norm_eps"],
        weight_tying=hf.get("tie_word_embeddings", False),
    )


def training_inputs(args, pad: int) -> list[tuple[object, int]]:
    """Each step's ``TrainingInput`` (prompts left-padded, responses right-padded to ``max_length // 2``) and
    its real token count (the prompt counted once per response)."""
    from tunix.sft.dpo import dpo_trainer

    tokens, half = read_jsonl(args.fixture / "tokens.jsonl"), args.max_length // 2
    batches = []
    for rows in read_order(args.order, args.steps, args.batch_size):
        prompt, prompt_mask = padded([tokens[r]["prompt_ids"] for r in rows], half, pad, left=True)
        chosen, chosen_mask = padded([tokens[r]["chosen_ids"] for r in rows], half, pad, left=False)
        rejected, rejected_mask = padded([tokens[r]["rejected_ids"] for r in rows], half, pad, left=False)
        real = int(prompt_mask.sum() * 2 + chosen_mask.sum() + rejected_mask.sum())
        batch = dpo_trainer.TrainingInput(
            prompt_ids=prompt,
            prompt_mask=prompt_mask,
            chosen_ids=chosen,
            chosen_mask=chosen_mask,
            rejected_ids=rejected,
            rejected_mask=rejected_mask,
        )
        batches.append((batch, real))
    return batches


def timed_trainer(args, log: StepLog, reals):
    """A Tunix ``DPOTrainer`` subclass that blocks on each step's loss and ends the step in ``log`` with its wall
    seconds (from the previous step's end), the next of ``reals`` and the padded token count."""
    import jax
    from tunix.sft.dpo import dpo_trainer

    class TimedDPOTrainer(dpo_trainer.DPOTrainer):
        last = 0.0  # perf_counter at the end of the previous step (set just before train())

        def _post_process_train_step(self, aux):
            super()._post_process_train_step(aux)
            loss = jax.block_until_ready(self._buffered_train_metrics.losses[-1])
            jax.block_until_ready(aux)
            now = time.perf_counter()
            padded_tokens = 2 * args.batch_size * args.max_length
            log.end_step(now - self.last, next(reals), padded_tokens, args.max_length, float(loss))
            self.last = now

    return TimedDPOTrainer


def main() -> None:
    args = parser(__doc__).parse_args()
    import jax
    import jax.numpy as jnp
    import optax
    from tunix.models.llama3 import params as llama_params
    from tunix.sft.dpo import dpo_trainer

    hf = json.loads((args.fixture / "model" / "config.json").read_text())
    cfg = model_config(hf)
    dtype = jnp.bfloat16 if args.config.endswith("bf16") else jnp.float32
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with mesh:
        policy = llama_params.create_model_from_safe_tensors(str(args.fixture / "model"), cfg, mesh, dtype=dtype)
        reference = llama_params.create_model_from_safe_tensors(str(args.fixture / "model"), cfg, mesh, dtype=dtype)
    batches = training_inputs(args, hf["pad_token_id"])
    log = StepLog()
    trainer_class = timed_trainer(args, log, iter([real for _, real in batches]))
    optimizer = optax.adamw(args.lr, b1=args.b1, b2=args.b2, eps=args.eps, weight_decay=args.weight_decay)
    config = dpo_trainer.DPOTrainingConfig(
        eval_every_n_steps=10**9, max_steps=args.steps, beta=args.beta, pbar_description=None
    )
    with mesh:
        trainer = trainer_class(policy, reference, optimizer, config)
        trainer.last = time.perf_counter()
        trainer.train([b for b, _ in batches])
    emit("tunix", args.config, log, True, {"jax": jax.__version__, "param_dtype": jnp.dtype(dtype).name})


if __name__ == "__main__":
    main()
