"""Memory-efficient (flash-style) attention in plain XLA: online softmax over key blocks, a recomputing backward.

Shapes: B batch, T queries, S keys, K key/value heads, G queries per key/value head, Hd head dim; blocks of
``bq`` queries and ``bk`` keys (``nq``, ``nk`` of them, T and S padded up to whole blocks internally).

The forward keeps, per query block, a running max ``m``, normaliser ``l`` and unnormalised output; it saves only
q, k, v, the output and the log-sum-exp ``[B, K, G, T]``. The backward recomputes each block's scores from those
(never a ``[T, S]`` tensor). Each block's mask comes from the :class:`~jaxspo.models.attention.MaskSpec`, and a
block no query of the batch can see (``MaskSpec.block_visible``: above the causal diagonal, chosen × rejected of
packed rows, outside every window) is skipped by a ``lax.cond`` on a scalar. A query that sees no key at all
(left padding) gets output 0 and no gradient (``xla`` gives the mean of v there; no loss reads either).
:func:`jaxspo.models.attention.attention` runs the dense kernel instead when the rows fit in one block.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxspo.models.mask_spec import MaskSpec

_F32 = jnp.float32


def pad_blocks(x: jax.Array, size: int, axis: int = 1) -> jax.Array:
    """``x`` zero-padded along ``axis`` to a multiple of ``size``."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -x.shape[axis] % size)
    return jnp.pad(x, pad)


def _block_mask(spec: MaskSpec, sliding: jax.Array, q_index: jax.Array, k_index: jax.Array) -> jax.Array:
    """Visibility ``[B, bq, bk]`` of padded key indices to padded query indices (padding sees and is seen by
    nothing)."""
    t, s = spec.query_slots.shape[0], spec.key_valid.shape[1]
    seen = spec.visible(jnp.minimum(q_index, t - 1), jnp.minimum(k_index, s - 1), sliding)
    return seen & (q_index < t)[None, :, None] & (k_index < s)[None, None, :]


def tie_to_queries(q: jax.Array, spec: MaskSpec, table: jax.Array) -> tuple[MaskSpec, jax.Array]:
    """``spec`` and the block table ``[nq, nk]`` made to depend on ``q`` (an optimisation barrier, no computation).

    Under ``jax.grad`` of a loop (the decoder's layer scan), partial evaluation computes up front, outside the
    loop, every value that depends only on the loop's constants, and the mask fields are such constants: the
    block loops' masks would be built for all blocks at once and kept as a stacked residual ``[nq, nk, B, K, G,
    bq, bk]`` (the size of the whole score matrix, float32). Tied to the queries, they stay inside the loops."""
    _, spec, table = jax.lax.optimization_barrier((q, spec, table))
    return spec, table


def _scores(qb: jax.Array, kb: jax.Array, scale: float, softcap: float) -> tuple[jax.Array, jax.Array | None]:
    """Scores ``[B, K, G, bq, bk]`` float32 of ``qb [B, bq, K, G, Hd]`` against ``kb [B, bk, K, Hd]``, and with a
    soft-cap the ``tanh`` the backward needs (``d cap(x)/dx = 1 - tanh²``)."""
    s = jnp.einsum("bqkgd,bskd->bkgqs", qb, kb, preferred_element_type=_F32) * scale
    if not softcap:
        return s, None
    t = jnp.tanh(s / softcap)
    return softcap * t, t


def _slice(x: jax.Array, index: jax.Array, size: int, axis: int = 1) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(x, index * size, size, axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8, 9))
def _attention(q, k, v, spec, sliding, table, bq: int, bk: int, scale: float, softcap: float):
    return flash_forward(q, k, v, spec, sliding, table, bq, bk, scale, softcap)[0].astype(q.dtype)


def flash_forward(q, k, v, spec, sliding, table, bq, bk, scale, softcap):
    """q ``[B, Tp, K, G, Hd]``, k/v ``[B, Sp, K, Hd]`` (padded) -> (out ``[B, Tp, K, G, Hd]`` float32, lse
    ``[B, K, G, Tp]``; a query that sees no key gets out 0 and lse -inf)."""
    b, tp, kh, g, hd = q.shape
    nq, nk = tp // bq, k.shape[1] // bk
    spec, table = tie_to_queries(q, spec, table)

    def query_block(_, i):
        qb, q_index = _slice(q, i, bq), i * bq + jnp.arange(bq)

        def key_block(carry, j):
            def attend(carry):
                m, l, acc = carry
                s, _ = _scores(qb, _slice(k, j, bk), scale, softcap)
                mask = _block_mask(spec, sliding, q_index, j * bk + jnp.arange(bk))[:, None, None]  # [B, 1, 1, bq, bk]
                m_new = jnp.maximum(m, jnp.where(mask, s, -jnp.inf).max(-1))
                m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # a row that has seen nothing yet stays at zero
                p = jnp.where(mask, jnp.exp(s - m_safe[..., None]), 0.0)
                correction = jnp.exp(m - m_safe)
                pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), _slice(v, j, bk), preferred_element_type=_F32)
                return m_new, l * correction + p.sum(-1), acc * correction[..., None] + pv

            return jax.lax.cond(table[i, j], attend, lambda c: c, carry), None

        init = (
            jnp.full((b, kh, g, bq), -jnp.inf, _F32),
            jnp.zeros((b, kh, g, bq), _F32),
            jnp.zeros((b, kh, g, bq, hd), _F32),
        )
        (m, l, acc), _ = jax.lax.scan(key_block, init, jnp.arange(nk))
        seen = l > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf)
        return None, (out, lse)

    _, (out, lse) = jax.lax.scan(query_block, None, jnp.arange(nq))  # [nq, B, K, G, bq, Hd], [nq, B, K, G, bq]
    out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, tp, kh, g, hd)
    lse = lse.transpose(1, 2, 3, 0, 4).reshape(b, kh, g, tp)
    return out, lse


def _attention_fwd(q, k, v, spec, sliding, table, bq, bk, scale, softcap):
    out, lse = flash_forward(q, k, v, spec, sliding, table, bq, bk, scale, softcap)
    out = out.astype(q.dtype)
    return out, (q, k, v, spec, sliding, table, out, lse)


def _attention_bwd(bq, bk, scale, softcap, residuals, g_out):
    q, k, v, spec, sliding, table, out, lse = residuals
    g_out = g_out.astype(q.dtype)
    delta = output_delta(g_out, out)
    dq, dk, dv = flash_backward(q, k, v, spec, sliding, table, g_out, delta, lse, bq, bk, scale, softcap)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None, None, None


def output_delta(g_out: jax.Array, out: jax.Array) -> jax.Array:
    """``rowsum(dO · O)`` ``[B, K, G, Tp]`` float32 of g_out and out ``[B, Tp, K, G, Hd]`` (the softmax backward's
    shift)."""
    return jnp.einsum("bqkgd,bqkgd->bkgq", g_out.astype(_F32), out.astype(_F32))


def flash_backward(q, k, v, spec, sliding, table, g_out, delta, lse, bq, bk, scale, softcap):
    """Gradients (dq ``[B, Tp, K, G, Hd]``, dk, dv ``[B, Sp, K, Hd]``, float32) of the keys ``k/v`` under ``spec``
    given the softmax statistics of the whole row: ``lse`` and ``delta`` ``[B, K, G, Tp]`` (when k/v is one block of
    the keys, its share of the gradients)."""
    nq, nk = q.shape[1] // bq, k.shape[1] // bk

    def key_block(dq, j):
        kb, vb, k_index = _slice(k, j, bk), _slice(v, j, bk), j * bk + jnp.arange(bk)

        def query_block(carry, i):
            def attend(carry):
                dk, dv, dq = carry
                qb, gb = _slice(q, i, bq), _slice(g_out, i, bq)
                s, t = _scores(qb, kb, scale, softcap)
                mask = _block_mask(spec, sliding, i * bq + jnp.arange(bq), k_index)[:, None, None]
                p = jnp.where(mask, jnp.exp(jnp.where(mask, s - _slice(lse, i, bq, 3)[..., None], -jnp.inf)), 0.0)
                dv = dv + jnp.einsum("bkgqs,bqkgd->bskd", p.astype(gb.dtype), gb, preferred_element_type=_F32)
                dp = jnp.einsum("bqkgd,bskd->bkgqs", gb, vb, preferred_element_type=_F32)
                ds = p * (dp - _slice(delta, i, bq, 3)[..., None])
                if softcap:
                    ds = ds * (1.0 - t * t)
                ds = (ds * scale).astype(q.dtype)
                dq_i = jnp.einsum("bkgqs,bskd->bqkgd", ds, kb, preferred_element_type=_F32)
                dq = jax.lax.dynamic_update_slice_in_dim(dq, _slice(dq, i, bq) + dq_i, i * bq, 1)
                dk = dk + jnp.einsum("bkgqs,bqkgd->bskd", ds, qb, preferred_element_type=_F32)
                return dk, dv, dq

            return jax.lax.cond(table[i, j], attend, lambda c: c, carry), None

        zeros = jnp.zeros(kb.shape, _F32)
        (dk, dv, dq), _ = jax.lax.scan(query_block, (zeros, zeros, dq), jnp.arange(nq))
        return dq, (dk, dv)

    dq, (dk, dv) = jax.lax.scan(key_block, jnp.zeros(q.shape, _F32), jnp.arange(nk))  # dk/dv [nk, B, bk, K, Hd]
    dk, dv = (x.transpose(1, 0, 2, 3, 4).reshape(k.shape) for x in (dk, dv))
    return dq, dk, dv


_attention.defvjp(_attention_fwd, _attention_bwd)


def chunked_attention(
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
    """Attention of q ``[B, T, H, Hd]`` over k/v ``[B, S, K, Hd]`` under ``spec`` -> ``[B, T, H, Hd]``, in blocks of
    at most ``block`` queries × ``block`` keys (smaller when T or S is shorter, rounded up to a multiple of 8)."""
    b, t, h, hd = q.shape
    s, kh = k.shape[1], k.shape[2]
    bq, bk = (min(block, -(-n // 8) * 8) for n in (t, s))
    sliding = jnp.asarray(sliding)
    table = spec.block_visible(bq, bk, sliding)  # [nq, nk]
    q5 = pad_blocks(q.reshape(b, t, kh, h // kh, hd), bq)
    out = _attention(
        q5, pad_blocks(k, bk), pad_blocks(v, bk), spec, sliding, table, bq, bk, float(scale), float(softcap)
    )
    return out[:, :t].reshape(b, t, h, hd)
