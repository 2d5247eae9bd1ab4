"""Soft Preference Optimization (Sharifnassab et al., arXiv 2405.00747): the preference terms (docs/methods/soft-spo.md).

All terms are reference-free and read α = ``cfg.soft_spo.alpha``; s = α·log πθ(y) (sequence log-probs):

- ``soft_spo`` (pairs): −(1/α) log σ(α[log πθ(y_w) − log πθ(y_l)])
- ``soft_spo_best_of_n`` (lists): −(1/α) log( πθ(y_best)^α / Σ_j πθ(y_j)^α )
- ``soft_spo_ranked`` (lists ranked y_1 ≻ … ≻ y_n, Plackett–Luce):
  −(1/α) Σ_k [α log πθ(y_k) − logsumexp_{j≥k} α log πθ(y_j)]

A pair is the list [y_w, y_l], so the three agree at n = 2. Under Bradley–Terry / Plackett–Luce data
with rewards r, the tabular minimiser of each is softmax(r/α), whatever π_ref is.

Optional weighting μ (γ = ``cfg.soft_spo.gamma``, 0 = off). The paper has a weight that down-weights
lists the model itself finds unlikely; its exact form is our design [I]:
log μ = (γ/α)·logsumexp_j α log πθ(y_j), i.e. μ ∝ (Σ_j πθ(y_j)^α)^(γ/α), minus its mean over the
(micro-)batch, under stop-gradient. Under gradient accumulation the mean is per micro-batch.

The global KL regulariser (β_KL) needs on-policy samples; it lives in :mod:`jaxspo.train.kl_regularizer`.

List layout (:class:`ListLogps`): ``policy [B, n]`` sequence log-probs with each row ordered best
first and ``mask [B, n]`` (True where a response exists; lists of different sizes are padded, the
valid entries first). Every list needs a valid entry 0 (its best response).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from jaxspo.losses.registry import PairLogps, PairMetrics, register_loss

_FAR = -1e30  # score of a missing list entry: exp(_FAR − x) = 0, and finite gradients (no −inf − −inf)


@dataclasses.dataclass
class SoftSpoConfig:
    """``loss.soft_spo``: α, the μ weighting γ, and the global KL regulariser (see docs/methods/soft-spo.md).

    The regulariser adds β_KL · E_x E_{y~πθ(·|x)} Σ_t KL(πθ(·|x, y_<t) ‖ π_ref(·|x, y_<t)) to any
    configured loss: responses are sampled outside the step every ``kl_refresh`` steps for
    ``kl_prompts`` prompts from ``kl_prompt_source``, ``kl_samples_per_prompt`` each.
    """

    alpha: float = 1.0  # α > 0: softness; the tabular optimum is softmax(r/α)
    gamma: float = 0.0  # γ of the μ weighting [I]; 0 = off
    kl_beta: float = 0.0  # β_KL ≥ 0 of the global KL regulariser; > 0 needs loss.reference: resident (or adapter_off with LoRA)
    kl_prompts: int = 16  # prompts per regulariser batch (global)
    kl_samples_per_prompt: int = 1  # sampled responses per prompt
    kl_temperature: float = 1.0  # sampling temperature of the regulariser's responses
    kl_max_new_tokens: int = 16  # sampling budget per response
    kl_refresh: int = 1  # draw new samples every N preference steps
    kl_prompt_source: str = "train"  # a split of the task (train, sft, eval) or a .jsonl file of {"prompt": ...} rows

    def validate(self, reference: str, grad_accum_steps: int) -> None:
        """Raises ValueError naming the first bad ``loss.soft_spo`` key."""
        k = "loss.soft_spo"
        checks = [
            (self.alpha > 0, f"{k}.alpha must be positive, got {self.alpha}"),
            (self.kl_beta >= 0, f"{k}.kl_beta must be >= 0, got {self.kl_beta}"),
            (self.kl_prompts >= 1 and self.kl_samples_per_prompt >= 1, f"{k}.kl_prompts and kl_samples_per_prompt must be >= 1"),
            (self.kl_temperature > 0, f"{k}.kl_temperature must be positive (on-policy samples), got {self.kl_temperature}"),
            (self.kl_max_new_tokens >= 1 and self.kl_refresh >= 1, f"{k}.kl_max_new_tokens and kl_refresh must be >= 1"),
            (
                self.kl_prompt_source in ("train", "sft", "eval") or self.kl_prompt_source.endswith(".jsonl"),
                f"{k}.kl_prompt_source must be train, sft, eval or a .jsonl file, got '{self.kl_prompt_source}'",
            ),
            (
                self.kl_beta == 0 or reference in ("resident", "adapter_off"),
                f"{k}.kl_beta > 0 needs the frozen reference inside the step (loss.reference: resident, or adapter_off with LoRA), got loss.reference: {reference}",
            ),
            (
                self.kl_beta == 0 or (self.kl_prompts * self.kl_samples_per_prompt) % grad_accum_steps == 0,
                f"{k}.kl_prompts × kl_samples_per_prompt must divide by trainer.grad_accum_steps ({grad_accum_steps})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@struct.dataclass
class ListLogps:
    """Per-list sequence log-probs, rows best first. ``policy``, ``lengths`` ``[B, n]`` float; ``mask`` ``[B, n]`` bool."""

    policy: jax.Array
    mask: jax.Array
    lengths: jax.Array


def _scores(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """α·log πθ ``[B, n]`` with missing entries at a far-negative finite value."""
    return jnp.where(mask, alpha * logps, _FAR)


def best_of_n_loss(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """−(1/α) log softmax(α·logps)[best], the best being entry 0 of each row; ``[B, n]`` → ``[B]``."""
    scores = _scores(logps, mask, alpha)
    return -(scores[:, 0] - jax.nn.logsumexp(scores, axis=-1)) / alpha


def plackett_luce_loss(logps: jax.Array, mask: jax.Array, alpha: float) -> jax.Array:
    """−(1/α) Σ_k [s_k − logsumexp_{j≥k} s_j] over valid k, s = α·logps, rows best first; ``[B, n]`` → ``[B]``."""
    scores = _scores(logps, mask, alpha)
    suffix = jax.lax.cumlogsumexp(scores, axis=scores.ndim - 1, reverse=True)  # [B, n]: logsumexp_{j≥k} s_j
    return -jnp.where(mask, scores - suffix, 0.0).sum(-1) / alpha


def mu_weights(logps: jax.Array, mask: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """μ ``[B]`` [I]: exp((γ/α)·logsumexp_j α·logps − its batch mean), stop-gradient; ones when γ = 0."""
    if gamma == 0:
        return jnp.ones(logps.shape[:1], logps.dtype)
    log_mu = (gamma / alpha) * jax.nn.logsumexp(_scores(logps, mask, alpha), axis=-1)
    return jax.lax.stop_gradient(jnp.exp(log_mu - log_mu.mean()))


def _list_metrics(logps: jax.Array, mask: jax.Array, alpha: float, mu: jax.Array) -> PairMetrics:
    scores = jax.lax.stop_gradient(_scores(logps, mask, alpha))
    metrics = {"list/top1_accuracy": (jnp.argmax(scores, axis=-1) == 0).astype(jnp.float32)}
    return metrics | ({"soft_spo/mu": mu} if mu is not None else {})


@register_loss("soft_spo", needs_reference=False)
def soft_spo(logps: PairLogps, cfg) -> tuple[jax.Array, PairMetrics]:
    """−(1/α) log σ(α[log πθ(y_w) − log πθ(y_l)]) · μ; SPO, Sharifnassab et al., arXiv 2405.00747.

    α = ``cfg.soft_spo.alpha``, μ from ``cfg.soft_spo.gamma`` (:func:`mu_weights`). Rewards are α·log πθ.
    """
    spo = cfg.soft_spo
    pair = jnp.stack([logps.policy_chosen, logps.policy_rejected], axis=-1)  # [B, 2]
    mask = jnp.ones(pair.shape, bool)
    mu = mu_weights(pair, mask, spo.alpha, spo.gamma)
    rewards = jax.lax.stop_gradient(spo.alpha * pair)
    metrics = {"rewards/chosen": rewards[:, 0], "rewards/rejected": rewards[:, 1]}
    return mu * best_of_n_loss(pair, mask, spo.alpha), metrics | ({"soft_spo/mu": mu} if spo.gamma else {})


def _weighted_list_term(term, logps: ListLogps, cfg) -> tuple[jax.Array, PairMetrics]:
    """μ · term(policy [B, n], mask [B, n], α) per list, with the list metrics."""
    spo = cfg.soft_spo
    mu = mu_weights(logps.policy, logps.mask, spo.alpha, spo.gamma)
    loss = mu * term(logps.policy, logps.mask, spo.alpha)
    return loss, _list_metrics(logps.policy, logps.mask, spo.alpha, mu if spo.gamma else None)


@register_loss("soft_spo_best_of_n", needs_reference=False, layout="list")
def soft_spo_best_of_n(logps: ListLogps, cfg) -> tuple[jax.Array, PairMetrics]:
    """−(1/α) log(πθ(y_best)^α / Σ_j πθ(y_j)^α) · μ on lists; SPO, Sharifnassab et al., arXiv 2405.00747."""
    return _weighted_list_term(best_of_n_loss, logps, cfg)


@register_loss("soft_spo_ranked", needs_reference=False, layout="list")
def soft_spo_ranked(logps: ListLogps, cfg) -> tuple[jax.Array, PairMetrics]:
    """Plackett–Luce −(1/α) Σ_k log softmax(α log πθ(y_k..n))[0] · μ; SPO, Sharifnassab et al., arXiv 2405.00747."""
    return _weighted_list_term(plackett_luce_loss, logps, cfg)
