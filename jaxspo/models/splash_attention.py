"""Pallas TPU splash attention for padded rows: causal (or causal + local window) mask, GQA, soft-cap.

Kernel choice: JAX's own ``jax.experimental.pallas.ops.tpu.splash_attention``. It ships with the pinned jax
(no new dependency), takes GQA (``num_q_heads % num_kv_heads == 0``, query head ``h`` reads key/value head
``h // G`` as HF does), the Gemma 2 soft-cap, local windows and segment ids, compiles for TPU through libtpu
(so ``jaxspo compile`` covers it) and has a Pallas interpret mode that runs it on CPU for the tests
(:func:`pallas_interpret`). tokamax is not installed here and would be a new dependency for the same kernel.

How the :class:`~jaxspo.models.attention.MaskSpec` maps onto it (queries are the keys: T = S, slots 0..T-1):

- causal over slots: ``CausalMask``; on sliding layers ``LocalMask`` keeping keys less than ``window`` behind.
  The per-layer flag may be traced (layer scan): both kernels are built and ``lax.cond`` picks one.
- key validity: segment ids ``valid`` (1) / padding (0) on both sides, so real queries read real keys only
  (padding queries read padding and are never read).
- packed rows cannot be expressed: a query must see its own segment *and* segment 0. The exact construction
  is a cascade (prompt keys and own-segment keys attended separately, merged through their log-sum-exps),
  but splash returns its log-sum-exp only without a backward (``save_residuals`` raises under AD), so the
  cascade could not be trained. Packed rows therefore run the ``chunked`` kernel (same result; see
  :func:`splash_attention`).

Constraints: the kernel tiles blocks of a multiple of 128 keys (``model.attention_block`` rounded up to one, at
most the padded row); T is padded up to a whole number of blocks here (padding keys are invalid). libtpu
compiles head dims below the 128 lanes too (16 and 128 checked by ``tests/test_compile.py`` and by hand), so
no head dim is refused; off TPU (and outside :func:`pallas_interpret`) :func:`splash_refusal` refuses at
start-up. Padding queries see only padding under splash (their outputs are never read). Inside a mesh (``jaxspo.sharding.activation_sharding``) the kernel runs under
``jax.shard_map``: batch on the batch axes, heads on ``tensor`` (replicated when the key/value heads do not
divide over it).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as splash
from jax.sharding import PartitionSpec

from jaxspo.models.splash_cascade import cascade_parts, make_cascade
from jaxspo.models.target import target_platform
from jaxspo.sharding import active_sharding, logical_to_spec

if TYPE_CHECKING:
    from jaxspo.models.attention import MaskSpec

LANES = 128  # key blocks are multiples of this (the TPU's vector lanes)
_INTERPRET: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxspo_pallas_interpret", default=False)


@contextlib.contextmanager
def pallas_interpret() -> Iterator[None]:
    """While active, ``model.attention=splash`` is accepted on CPU and runs in Pallas interpret mode (tests)."""
    token = _INTERPRET.set(True)
    try:
        yield
    finally:
        _INTERPRET.reset(token)


def splash_refusal(platform: str) -> str | None:
    """Why splash cannot run on ``platform`` (one clause), or None."""
    if platform == "tpu" or (platform == "cpu" and _INTERPRET.get()):
        return None
    return f"needs a TPU (this backend is {platform})"


def _block(length: int, block: int) -> int:
    """Block size: ``block`` rounded up to whole lanes, at most the padded length."""
    return min(-(-block // LANES) * LANES, -(-length // LANES) * LANES)


@functools.lru_cache(maxsize=32)
def _kernel(length: int, heads: int, window: int, softcap: float, block: int, interpret: bool, residuals: bool = False):
    """The splash kernel for ``heads`` query heads over rows of ``length`` (causal, or local with ``window``);
    with ``residuals`` it returns ``(out, (logsumexp,))`` and is not differentiable (the cascade's parts)."""
    shape = (length, length)
    mask = splash.LocalMask(shape, (window - 1, 0), 0) if window else splash.CausalMask(shape)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():  # its block tables are constants, shared by later traces (the cache)
        return splash.make_splash_mha(
            splash.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1, q_seq_shards=1,
            attn_logits_soft_cap=softcap or None, interpret=interpret, save_residuals=residuals,
        )


def _local(q, k, v, valid, segments, positions, sliding, *, window: int, softcap: float, block: int, interpret: bool):
    """Per device: q ``[b, T, h, Hd]`` (already scaled), k/v ``[b, T, kh, Hd]``, valid (and for packed rows
    segments and positions) ``[b, T]`` -> ``[b, T, h, Hd]``."""
    t, h = q.shape[1], q.shape[2]
    if segments is not None:
        cascade = make_cascade((
            _kernel(t, h, 0, softcap, block, interpret, residuals=True),
            _kernel(t, h, window, softcap, block, interpret, residuals=True) if window else None,
        ))

        def packed_row(q, k, v, valid, segments, positions):
            parts = cascade_parts(valid, segments, positions, windowed=bool(window))
            q, k, v = (x.transpose(1, 0, 2) for x in (q, k, v))
            return cascade(q, k, v, parts, sliding).transpose(1, 0, 2)

        return jax.vmap(packed_row)(q, k, v, valid, segments, positions)
    full = _kernel(t, h, 0, softcap, block, interpret)
    local = _kernel(t, h, window, softcap, block, interpret) if window else full

    def row(q, k, v, valid):  # one row, heads first
        ids = splash.SegmentIds(valid.astype(jnp.int32), valid.astype(jnp.int32))
        q, k, v = (x.transpose(1, 0, 2) for x in (q, k, v))
        if local is full:
            out = full(q, k, v, ids)
        else:
            out = jax.lax.cond(sliding, lambda: local(q, k, v, ids), lambda: full(q, k, v, ids))
        return out.transpose(1, 0, 2)

    return jax.vmap(row)(q, k, v, valid)


def splash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, spec: MaskSpec, sliding: bool | jax.Array, *, scale: float, softcap: float, block: int
) -> jax.Array:
    """Attention of q ``[B, T, H, Hd]`` over k/v ``[B, T, K, Hd]`` under ``spec`` -> ``[B, T, H, Hd]``: padded
    rows in one call, packed rows (``spec.segments``) through :mod:`jaxspo.models.splash_cascade`.

    ValueError if ``spec`` is not self-attention over slots ``0..T-1``.
    """
    b, t, h, hd = q.shape
    if k.shape[1] != t:
        raise ValueError("model.attention=splash: takes self-attention rows only (as many keys as queries)")
    length = -(-t // LANES) * LANES
    blk = _block(length, block)
    length = -(-length // blk) * blk
    pad = lambda x: jnp.pad(x, [(0, 0), (0, length - t)] + [(0, 0)] * (x.ndim - 2))  # noqa: E731
    valid = pad(jnp.asarray(spec.key_valid))
    segments, positions = (None if x is None else pad(jnp.asarray(x)) for x in (spec.segments, spec.positions))
    q, k, v = pad(q * jnp.asarray(scale, q.dtype)), pad(k), pad(v)
    interpret = target_platform() == "cpu"  # only reachable under pallas_interpret() (splash_refusal)
    body = functools.partial(_local, window=spec.window, softcap=float(softcap), block=blk, interpret=interpret)
    sliding = jnp.asarray(sliding)
    active = active_sharding()
    if active is not None:
        mesh, rules = active
        q_spec = logical_to_spec(("batch", None, "heads", None), q.shape, mesh, rules)
        kv_spec = logical_to_spec(("batch", None, "kv_heads", None), k.shape, mesh, rules)
        if q_spec[2] != kv_spec[2]:  # heads split differently from key/value heads: keep both whole
            q_spec, kv_spec = (PartitionSpec(s[0], None, None, None) for s in (q_spec, kv_spec))
        body = jax.shard_map(
            body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, *[PartitionSpec(q_spec[0], None)] * 3, PartitionSpec()),
            out_specs=q_spec, check_vma=False,
        )
    return body(q, k, v, valid, segments, positions, sliding)[:, :t]
