"""The SFT objective: token-level NLL summed over completion tokens (the step divides by the global token count)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxspo.data.encode import encode_sft_rows
from jaxspo.objectives.base import Encode, Encoder, Metrics, Objective
from jaxspo.objectives.batches import SFTBatch
from jaxspo.train.logprobs import sequence_logps


def sft_loss(
    view, params: nnx.State, frozen: Any, batch: SFTBatch, rng: jax.Array | None = None, aux: Any = None
) -> tuple[jax.Array, Metrics]:
    """−Σ log-probs of the completion tokens, with the metric ``loss`` per token and ``tokens`` (non-pad)."""
    logps, lengths = sequence_logps(*view.policy(params, frozen, rng), batch.tokens, batch.valid, batch.loss_mask)
    loss_sum = -logps.sum()
    return loss_sum, {
        "loss": (loss_sum, lengths.sum()),
        "tokens": (batch.valid.sum().astype(jnp.float32), jnp.float32(1.0)),
    }


def sft_count(batch: SFTBatch) -> jax.Array:
    """The step's denominator: completion tokens of the whole batch."""
    return batch.loss_mask[:, 1:].sum().astype(jnp.float32)


def sft_encoder(cfg: Any) -> Encoder:
    """Rows → single sequences ``[N, data.max_length]`` (prompt then completion; the loss reads the completion)."""
    length, prompt_length = cfg.data.max_length, cfg.data.max_prompt_length

    def encoder(tokenizer: Any, split: str) -> Encode:
        return lambda rows: encode_sft_rows(
            rows, tokenizer=tokenizer, max_length=length, max_prompt_length=prompt_length
        )

    return encoder


def sft_objective(cfg: Any) -> Objective:
    return Objective("sft", SFTBatch, SFTBatch.required(), sft_loss, sft_count, encoder=sft_encoder(cfg))
