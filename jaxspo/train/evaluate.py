"""Held-out evaluation: pair metrics (accuracy, margins) and sampled-response gold rewards and KL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxspo.data.encode import decode_responses
from jaxspo.distributed import to_host
from jaxspo.sampling import sample
from jaxspo.sharding import activation_sharding
from jaxspo.train.logprobs import sequence_kl
from jaxspo.train.scoring import PairScorer, shard_rows


class Evaluator:
    """Evaluates a policy against the frozen reference on held-out pairs and prompts."""

    def __init__(
        self,
        cfg,
        mesh: Mesh,
        graphdef: nnx.GraphDef,
        tokenizer,
        pairs: dict[str, np.ndarray],
        prompts: tuple[np.ndarray, np.ndarray, list[str]],
        gold_rewards: Callable[[str, str], dict[str, float]] | None,
        dimensions: tuple[str, ...],
    ):
        self.cfg, self.mesh, self.graphdef, self.tokenizer = cfg, mesh, graphdef, tokenizer
        self.gold_rewards, self.dimensions = gold_rewards, dimensions
        self.pairs = pairs
        prompt_tokens, prompt_valid, self.prompt_texts = prompts
        self.prompt_tokens, self.prompt_valid = prompt_tokens, prompt_valid
        self.scorer = PairScorer(graphdef, mesh, cfg.mesh.rules, cfg.trainer.batch_size)
        self._kl_fn = jax.jit(self._kl)
        self.extra_metrics: list[
            Callable[[Any, Any], dict[str, float]]
        ] = []  # (params, reference) -> more eval/... metrics

    def _shard_rows(self, x: np.ndarray) -> jax.Array:
        return shard_rows(x, self.mesh, self.cfg.mesh.rules)

    def _kl(
        self, params: Any, reference_params: Any, tokens: jax.Array, valid: jax.Array, response: jax.Array
    ) -> jax.Array:
        with activation_sharding(self.mesh, self.cfg.mesh.rules):
            return sequence_kl((self.graphdef, params), (self.graphdef, reference_params), tokens, valid, response)

    def __call__(self, params: Any, reference_params: Any, rng: jax.Array) -> dict[str, float]:
        """Metrics named ``eval/...`` (floats)."""
        beta = self.cfg.loss.beta
        chosen, rejected = self.scorer(params, self.pairs)
        ref_chosen, ref_rejected = self.scorer(reference_params, self.pairs)
        margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
        out = {
            "eval/logps_accuracy": float(np.mean(chosen > rejected)),
            "eval/rewards/accuracies": float(np.mean(margin > 0)),
            "eval/rewards/margins": float(np.mean(margin)),
            "eval/dpo_loss": float(np.mean(np.logaddexp(0.0, -margin))),
        }
        out.update(self.sample_metrics(params, reference_params, rng))
        for metrics in self.extra_metrics:
            out.update(metrics(params, reference_params))
        return out

    def sample(self, params: Any, rng: jax.Array) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """One response per held-out prompt: (texts, tokens ``[N, max_new_tokens]``, valid, per-token log-probs
        under the temperature-1 policy), on every process."""
        e = self.cfg.eval
        tokens, valid = self._shard_rows(self.prompt_tokens), self._shard_rows(self.prompt_valid)
        out = sample(
            self.graphdef,
            params,
            tokens,
            valid,
            rng,
            max_new_tokens=e.max_new_tokens,
            eos_id=self.tokenizer.eos_token_id,
            pad_id=self.tokenizer.pad_token_id,
            temperature=e.temperature,
            top_k=e.top_k,
            top_p=e.top_p,
        )
        sampled, sampled_valid = to_host(out.tokens), to_host(out.valid)  # the same on every process
        return decode_responses(sampled, sampled_valid, self.tokenizer), sampled, sampled_valid, to_host(out.logprobs)

    def sample_metrics(self, params: Any, reference_params: Any, rng: jax.Array) -> dict[str, float]:
        """Samples one response per held-out prompt; mean gold reward per dimension, KL, length."""
        texts, sampled, sampled_valid, logprobs = self.sample(params, rng)
        scores = [self.gold_rewards(p, r) for p, r in zip(self.prompt_texts, texts)] if self.gold_rewards else []
        full_tokens = np.concatenate([self.prompt_tokens, sampled], axis=1)
        full_valid = np.concatenate([self.prompt_valid, sampled_valid], axis=1)
        response = np.concatenate([np.zeros_like(self.prompt_valid), sampled_valid], axis=1)
        kl = self._kl_fn(params, reference_params, *(self._shard_rows(x) for x in (full_tokens, full_valid, response)))
        metrics = {f"eval/gold/{d}": float(np.mean([s[d] for s in scores])) for d in self.dimensions if scores}
        metrics["eval/kl"] = float(np.mean(to_host(kl)))
        metrics["eval/response_tokens"] = float(sampled_valid.sum(1).mean())
        metrics["eval/response_nll"] = float(
            -logprobs.sum(1).mean()
        )  # −log πθ(y|x) of its own samples: an entropy estimate
        return metrics
