"""Global KL regulariser (docs/methods/soft-spo.md), an add-on term of any objective: β_KL·KL(πθ ‖ π_ref) on policy
samples.

Outside the jitted train step, :class:`KLSampler` draws y ~ πθ(·|x) with the jitted KV-cache sampler
(:func:`jaxspo.sampling.sample`) for ``loss.kl.prompts`` prompts of the regularisation prompt set,
``samples_per_prompt`` each, every ``refresh`` steps, sharded over the step's mesh; they enter the
step as batch fields ``kl_tokens``, ``kl_valid``, ``kl_response`` ``[M, P + N]`` (prompt then response;
:class:`~jaxspo.objectives.batches.KLSamples`). Inside the step, :func:`with_kl_regulariser` adds β_KL times
the mean over the M samples of
Σ_t Σ_v πθ(v|·)(log πθ(v|·) − log π_ref(v|·)) over the sampled positions [D/I]: the samples are fixed
data and the gradient flows through πθ's full next-token distributions (π_ref is the frozen resident
reference). A refresh interval above 1 reuses samples drawn from an earlier policy; a resumed run
draws fresh samples at its first step.

Metrics: ``kl/value`` (mean KL per sampled response, nats), ``loss/preference`` (the loss without the
regulariser; ``loss`` includes it), and from the sampler, over the logging window,
``kl/sample_seconds_per_step``, ``kl/samples_per_second`` and ``kl/sample_tokens_per_second``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from jaxspo.data import encode_prompts, read_jsonl
from jaxspo.data.formats import is_conversation
from jaxspo.distributed import to_global
from jaxspo.errors import DataError
from jaxspo.sampling import sample
from jaxspo.sharding import named_sharding
from jaxspo.objectives.base import Objective
from jaxspo.objectives.batches import KL_FIELDS
from jaxspo.train.logprobs import sequence_kl


def kl_rows(loss_cfg) -> int:
    """M: sampled responses per step."""
    return loss_cfg.kl.prompts * loss_cfg.kl.samples_per_prompt


def dims(loss_cfg, max_prompt_length: int) -> dict[str, int]:
    """The samples' dimensions: ``[M, max_prompt_length + loss.kl.max_new_tokens]``."""
    return {"samples": kl_rows(loss_cfg), "sample_length": max_prompt_length + loss_cfg.kl.max_new_tokens}


def with_kl_regulariser(objective: Objective, cfg) -> Objective:
    """``objective`` plus β_KL·(count/M)·Σ_samples KL, so that after the step divides by the global
    count (pairs or lists) the loss is the objective's mean + β_KL·mean KL per sampled response; its batch
    gains the samples (drawn by :class:`KLSampler`, the objective's augmenter) and the step passes it the
    frozen reference."""
    beta, base = cfg.loss.kl.beta, objective.loss

    def regularised(view, params: nnx.State, frozen: Any, batch: Any, rng: jax.Array | None = None, aux: Any = None):
        loss_sum, metrics = base(view, params, frozen, batch, rng, aux)
        with jax.named_scope("kl_regulariser"):
            policy, reference = view.policy(params, frozen, rng), view.reference(jax.lax.stop_gradient(frozen))
            kl = sequence_kl(policy, reference, batch.kl_tokens, batch.kl_valid, batch.kl_response)  # [M]
        preference_sum, count = metrics["loss"]
        added = beta * kl.sum() * count / kl.shape[0]
        metrics["loss/preference"] = (jax.lax.stop_gradient(preference_sum), count)
        metrics["loss"] = (preference_sum + added, count)
        metrics["kl/value"] = (jax.lax.stop_gradient(kl.sum()), jnp.float32(kl.shape[0]))
        return loss_sum + added, metrics

    def augmenter(mesh, graphdef: nnx.GraphDef, tokenizer, splits: dict[str, list], shardings: dict[str, Any]):
        prompts = regularisation_prompts(cfg.loss.kl.prompt_source, splits)
        return KLSampler(cfg, mesh, graphdef, tokenizer, prompts, shardings)

    return objective.replace(
        fields=objective.fields + KL_FIELDS,
        loss=regularised,
        dims=dict(objective.dims) | dims(cfg.loss, cfg.data.max_prompt_length),
        reads_frozen=True,
        reference_passes=objective.reference_passes + ("kl",),
        augmenter=augmenter,
        augmented_fields=KL_FIELDS,
    )


def regularisation_prompts(source: str, splits: dict[str, list[dict[str, Any]]]) -> list[Any]:
    """Distinct prompts of ``source``, in order: a split (``train``, ``sft``, ``eval``) or a ``.jsonl`` file of
    rows with ``prompt`` (text, or a message list for conversational data)."""
    if source not in splits and not Path(source).expanduser().is_file():
        raise DataError(
            f"{source}: no such split or file (loss.kl.prompt_source); name a split (train, sft, eval) or a .jsonl "
            "file of prompts"
        )
    rows = splits[source] if source in splits else read_jsonl(Path(source).expanduser())
    prompts, seen = [], set()
    for i, row in enumerate(rows):
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not (isinstance(prompt, str) and prompt.strip()) and not is_conversation(prompt):
            raise DataError(
                f"{source}, row {i}: field 'prompt' must be a non-empty str or a list of messages "
                "(loss.kl.prompt_source); fix the row"
            )
        key = json.dumps(prompt, sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append(prompt)
    return prompts


class KLSampler:
    """``sampler(step, params) -> batch fields`` for step ``step`` (1-based): fresh samples every ``loss.kl.refresh``
    steps."""

    def __init__(
        self, cfg, mesh, graphdef: nnx.GraphDef, tokenizer, prompts: list[str], shardings: dict[str, NamedSharding]
    ):
        self.cfg, self.kl, self.mesh, self.graphdef = cfg, cfg.loss.kl, mesh, graphdef
        self.eos, self.pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.tokens, self.valid = encode_prompts(
            prompts, tokenizer, cfg.data.max_prompt_length, keep_end=True
        )  # [P_all, P]
        self.key = jax.random.key(cfg.trainer.seed + 2)
        self._join = jax.jit(self._join_fn, out_shardings={k: shardings[k] for k in KL_FIELDS})
        self.fields: dict[str, jax.Array] | None = None
        self.window = {"seconds": 0.0, "samples": 0, "tokens": 0}

    @staticmethod
    def _join_fn(tokens, valid, sampled, sampled_valid):
        return {
            "kl_tokens": jnp.concatenate([tokens, sampled], axis=1),
            "kl_valid": jnp.concatenate([valid, sampled_valid], axis=1),
            "kl_response": jnp.concatenate([jnp.zeros_like(valid), sampled_valid], axis=1),
        }

    def draw(self, refresh: int, params: nnx.State) -> dict[str, jax.Array]:
        """Samples for refresh number ``refresh``: prompts drawn without replacement (when possible) by seed and
        refresh."""
        kl = self.kl
        rng = np.random.default_rng([self.cfg.trainer.seed, refresh])
        rows = rng.choice(len(self.tokens), kl.prompts, replace=len(self.tokens) < kl.prompts)
        rows = np.repeat(rows, kl.samples_per_prompt)  # [M]
        sharding = named_sharding(("batch", None), (len(rows), self.tokens.shape[1]), self.mesh, self.cfg.mesh.rules)
        tokens, valid = to_global((self.tokens[rows], self.valid[rows]), (sharding, sharding))
        out = sample(
            self.graphdef,
            params,
            tokens,
            valid,
            jax.random.fold_in(self.key, refresh),
            max_new_tokens=kl.max_new_tokens,
            eos_id=self.eos,
            pad_id=self.pad,
            temperature=kl.temperature,
        )
        return self._join(tokens, valid, out.tokens, out.valid)

    def __call__(self, step: int, params: nnx.State) -> dict[str, jax.Array]:
        if self.fields is None or (step - 1) % self.kl.refresh == 0:
            jax.block_until_ready(params)  # let the previous (asynchronous) step finish: time the sampler alone
            start = time.perf_counter()
            self.fields = jax.block_until_ready(self.draw((step - 1) // self.kl.refresh, params))
            self.window["seconds"] += time.perf_counter() - start
            self.window["samples"] += kl_rows(self.cfg.loss)
            self.window["tokens"] += int(jnp.sum(self.fields["kl_response"]))
        return self.fields

    def drain_metrics(self, steps: int) -> dict[str, float]:
        """Sampling cost over the logging window of ``steps`` steps, then resets the window."""
        w, seconds = self.window, max(self.window["seconds"], 1e-9)
        out = {
            "kl/sample_seconds_per_step": w["seconds"] / max(steps, 1),
            "kl/samples_per_second": w["samples"] / seconds if w["samples"] else 0.0,
            "kl/sample_tokens_per_second": w["tokens"] / seconds if w["samples"] else 0.0,
        }
        self.window = {"seconds": 0.0, "samples": 0, "tokens": 0}
        return out
