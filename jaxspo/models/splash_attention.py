"""Pallas TPU splash attention: causal (or causal + local window) mask, GQA, soft-cap; padded and packed rows.

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
- packed rows: a query sees its own segment *and* its pair's prompt, which one segment id cannot say; they
  run as the exact cascade of :mod:`jaxspo.models.splash_cascade` (kernels built with ``save_residuals``).
- context parallelism (:mod:`jaxspo.models.context`): :func:`context_kernels` builds the kernels for the
  whole row with their block tables split along the queries, and :func:`splash_rows` runs inside the
  time-split ``shard_map``.

Constraints: the kernel tiles blocks of a multiple of 128 keys (``model.attention_block`` rounded up to one, at
most the padded row); T is padded up to a whole number of blocks here (padding keys are invalid). libtpu
compiles head dims below the 128 lanes too (16 and 128 checked by ``tests/test_compile.py`` and by hand), so
no head dim is refused; off TPU (and outside :func:`pallas_interpret`) :func:`splash_refusal` refuses at
start-up. Padding queries see only padding under splash (their outputs are never read). Inside a mesh
(``jaxspo.sharding.activation_sharding``) the kernel runs under
``jax.shard_map``: batch on the batch axes, heads on ``tensor`` (replicated when the key/value heads do not
divide over it).

Pallas' TPU modules (and :mod:`jaxspo.models.splash_cascade`, built on them) are imported only where a kernel is
built or run: every process that builds a model imports this module, and importing them costs ~0.3 CPU-s.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxspo.models.mask_spec import MaskSpec
from jaxspo.models.target import target_platform
from jaxspo.sharding import active_sharding, logical_to_spec

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
def _kernel(
    length: int, heads: int, window: int, softcap: float, block: int, interpret: bool, residuals: bool, q_shards: int
):
    """The splash kernel for ``heads`` query heads over rows of ``length`` (causal, or local with ``window``),
    its block tables split for ``q_shards`` query shards; with ``residuals`` it returns ``(out, (logsumexp,))``
    and is not differentiable (the cascade's parts)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    shape = (length, length)
    mask = splash.LocalMask(shape, (window - 1, 0), 0) if window else splash.CausalMask(shape)
    sizes = splash.BlockSizes(
        block_q=block,
        block_kv=block,
        block_kv_compute=block,
        block_q_dkv=block,
        block_kv_dkv=block,
        block_kv_dkv_compute=block,
        block_q_dq=block,
        block_kv_dq=block,
    )
    with jax.ensure_compile_time_eval():  # its block tables are constants, shared by later traces (the cache)
        return splash.make_splash_mha(
            splash.MultiHeadMask([mask] * heads),
            block_sizes=sizes,
            head_shards=1,
            q_seq_shards=q_shards,
            attn_logits_soft_cap=softcap or None,
            interpret=interpret,
            save_residuals=residuals,
        )


def splash_kernels(
    length: int, heads: int, window: int, softcap: float, block: int, *, packed: bool, q_shards: int = 1
) -> tuple:
    """``(causal kernel, local kernel or None)`` for rows of ``length`` slots (packed rows: the cascade's
    kernels, which return their log-sum-exps)."""
    interpret = target_platform() == "cpu"  # only reachable under pallas_interpret() (splash_refusal)
    make = lambda w: _kernel(length, heads, w, float(softcap), block, interpret, packed, q_shards)  # noqa: E731
    return make(0), make(window) if window else None


def context_kernels(
    length: int, q_shards: int, heads: int, window: int, softcap: float, block: int, *, packed: bool
) -> tuple | None:
    """:func:`splash_kernels` whose block tables split over ``q_shards`` query shards of ``length / q_shards``
    slots (context parallelism), or None when a shard is not a whole number of blocks (a multiple of 128
    slots): then the caller runs the chunked kernel."""
    shard = length // q_shards
    blk = _block(shard, block)
    if shard % blk:
        return None
    return splash_kernels(length, heads, window, softcap, blk, packed=packed, q_shards=q_shards)


def splash_rows(kernels: tuple, q, k, v, query_slots, valid, segments, sliding, *, windowed: bool) -> jax.Array:
    """Per device: q ``[b, Tq, h, Hd]`` (already scaled) at key slots ``query_slots [Tq]`` over k/v
    ``[b, S, kh, Hd]`` with valid (packed rows: and segments) ``[b, S]`` -> ``[b, Tq, h, Hd]``.
    ``kernels`` from :func:`splash_kernels`; ``windowed``: the cascade's moved-prompt part."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    from jaxspo.models.splash_cascade import cascade, cascade_parts, pick_kernel

    heads_first = lambda x: x.transpose(1, 0, 2)  # noqa: E731  (the kernel's layout, one row)
    if segments is None:

        def row(q, k, v, valid):  # padding queries read padding only (their outputs are never read)
            ids = splash.SegmentIds(valid[query_slots].astype(jnp.int32), valid.astype(jnp.int32))
            q, k, v = (heads_first(x) for x in (q, k, v))
            return heads_first(pick_kernel(sliding, kernels, lambda kernel: kernel(q, k, v, ids)))

        return jax.vmap(row)(q, k, v, valid)

    def packed_row(q, k, v, valid, segments):
        parts = cascade_parts(valid, segments, query_slots, windowed=windowed)
        return heads_first(cascade(kernels, *(heads_first(x) for x in (q, k, v)), parts, sliding))

    return jax.vmap(packed_row)(q, k, v, valid, segments)


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    spec: MaskSpec,
    sliding: bool | jax.Array,
    *,
    scale: float,
    softcap: float,
    block: int,
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
    segments = None if spec.segments is None else pad(jnp.asarray(spec.segments))
    q, k, v = pad(q * jnp.asarray(scale, q.dtype)), pad(k), pad(v)
    kernels = splash_kernels(length, h, spec.window, softcap, blk, packed=segments is not None)
    body = functools.partial(splash_rows, kernels, windowed=bool(spec.window))
    sliding = jnp.asarray(sliding)
    active = active_sharding()
    if active is not None:
        mesh, rules = active
        q_spec = logical_to_spec(("batch", None, "heads", None), q.shape, mesh, rules)
        kv_spec = logical_to_spec(("batch", None, "kv_heads", None), k.shape, mesh, rules)
        if q_spec[2] != kv_spec[2]:  # heads split differently from key/value heads: keep both whole
            q_spec, kv_spec = (PartitionSpec(s[0], None, None, None) for s in (q_spec, kv_spec))
        body = jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(
                q_spec,
                kv_spec,
                kv_spec,
                PartitionSpec(),
                *[PartitionSpec(q_spec[0], None)] * 2,
                PartitionSpec(),
            ),
            out_specs=q_spec,
            check_vma=False,
        )
    return body(q, k, v, jnp.arange(length), valid, segments, sliding)[:, :t]
