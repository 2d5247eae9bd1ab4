"""Jitted KV-cache sampling (greedy, temperature, top-k, top-p) from a :class:`jaxspo.models.Decoder`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct


@struct.dataclass
class SampleOutput:
    """Generated continuations; ``valid`` is True up to and including each row's EOS.

    tokens: ``[B, N]`` int32, ``pad_id`` where not valid.
    valid: ``[B, N]`` bool.
    logprobs: ``[B, N]`` float32, log-prob of each token under the temperature-1 model, 0 where not valid.
    """

    tokens: jax.Array
    valid: jax.Array
    logprobs: jax.Array


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to a common length: ``tokens [B, P]`` int32 and ``valid [B, P]`` bool."""
    width = max([1, *map(len, prompts)])
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    valid = np.zeros((len(prompts), width), bool)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = prompt
        valid[row, width - len(prompt) :] = True
    return tokens, valid


def _filter_logits(logits: jax.Array, top_k: int, top_p: float) -> jax.Array:
    """Sets logits ``[B, V]`` outside the top-k / nucleus (top-p) set to -inf (0 / 1.0 = off)."""
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # [B, V] descending
        probs = jax.nn.softmax(ordered, axis=-1)
        # Keep a token while the mass strictly before it is < top_p (so the top token always stays).
        keep = jnp.cumsum(probs, axis=-1) - probs < top_p
        threshold = jnp.min(jnp.where(keep, ordered, jnp.inf), axis=-1, keepdims=True)  # [B, 1]
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _choose(
    logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float
) -> tuple[jax.Array, jax.Array]:
    """Next tokens ``[B]`` int32 from logits ``[B, V]`` and their temperature-1 log-probs ``[B]``."""
    if temperature == 0.0:
        tokens = jnp.argmax(logits, axis=-1)
    else:
        tokens = jax.random.categorical(key, _filter_logits(logits / temperature, top_k, top_p), axis=-1)
    logprobs = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    return tokens.astype(jnp.int32), logprobs


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "max_new_tokens", "eos_id", "pad_id", "temperature", "top_k", "top_p"),
)
def sample(
    graphdef: nnx.GraphDef,
    params: nnx.State | tuple[nnx.State, ...],
    prompt_tokens: jax.Array,
    prompt_valid: jax.Array,
    rng: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> SampleOutput:
    """Samples ``max_new_tokens`` continuations of LEFT-padded prompts ``[B, P]`` (every row non-empty).

    ``graphdef, params = nnx.split(model, nnx.Param)``; a model with other state is passed as
    ``graphdef, (params, *rest)`` from ``nnx.split(model, nnx.Param, ...)`` (anything ``nnx.merge`` takes).
    Params may be sharded over a mesh. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1.0 are off.
    Sampling settings are static (one compilation each). Stops early once every row has emitted EOS.
    """
    states = params if isinstance(params, tuple) else (params,)
    model = nnx.merge(graphdef, *states)
    batch, prompt_len = prompt_tokens.shape
    positions = jnp.maximum(jnp.cumsum(prompt_valid, axis=1) - 1, 0).astype(jnp.int32)  # [B, P]
    cache = model.init_cache(batch, prompt_len + max_new_tokens)
    logits, cache = model.decode(prompt_tokens, positions, prompt_valid, cache, 0)
    next_position = jnp.sum(prompt_valid, axis=1, dtype=jnp.int32)  # [B]: first free position per row

    out = SampleOutput(
        tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        valid=jnp.zeros((batch, max_new_tokens), bool),
        logprobs=jnp.zeros((batch, max_new_tokens), jnp.float32),
    )
    init = (0, logits[:, -1], cache, jnp.zeros((batch,), bool), rng, out)

    def unfinished(carry) -> jax.Array:
        step, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def step_fn(carry):
        step, logits, cache, done, rng, out = carry  # logits [B, V] predict token `step`
        rng, key = jax.random.split(rng)
        tokens, logprobs = _choose(logits, key, temperature, top_k, top_p)  # [B], [B]
        live = ~done
        out = SampleOutput(
            tokens=out.tokens.at[:, step].set(jnp.where(live, tokens, pad_id)),
            valid=out.valid.at[:, step].set(live),
            logprobs=out.logprobs.at[:, step].set(jnp.where(live, logprobs, 0.0)),
        )
        done = done | (tokens == eos_id)
        # Feed the token back; the final iteration's logits go unused (cache has room for it).
        logits, cache = model.decode(
            tokens[:, None], (next_position + step)[:, None], live[:, None], cache, prompt_len + step
        )
        return step + 1, logits[:, 0], cache, done, rng, out

    return jax.lax.while_loop(unfinished, step_fn, init)[-1]
