"""The projections' dot: ``einsum`` of an activation and a weight in the compute dtype, accumulated in float32."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_F32 = jnp.float32


def project(spec: str, x: jax.Array, weight: jax.Array, dtype: str) -> jax.Array:
    """``einsum(spec, x, weight)`` (two operands, explicit output) in ``dtype``, accumulated in float32.

    XLA:CPU computes a bf16 × bf16 → float32 dot natively (2–3× its float32 throughput with AVX512-BF16),
    but a bf16 × bf16 → bf16 dot, or one with a float32 operand, by converting to float32 first (no faster
    than float32). So in a low-precision dtype both the forward and the backward dots take bf16 operands
    and a float32 result (:func:`_low_precision_einsum`); TPUs accumulate in float32 either way. For
    float32 this is a plain einsum.
    """
    weight = weight.astype(dtype)
    if jnp.dtype(dtype) == _F32:
        return jnp.einsum(spec, x, weight)
    return _low_precision_einsum(spec, x.astype(dtype), weight).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_einsum(spec: str, x: jax.Array, w: jax.Array) -> jax.Array:
    """float32 ``einsum(spec, x, w)`` of two low-precision operands; its backward dots also take
    low-precision operands (the cotangent rounded to the operands' dtype, as autocast does)."""
    return jnp.einsum(spec, x, w, preferred_element_type=_F32)


def _low_precision_fwd(spec: str, x: jax.Array, w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _low_precision_einsum(spec, x, w), (x, w)


def _low_precision_bwd(spec: str, operands: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = operands
    inputs, out = spec.split("->")
    a, b = inputs.split(",")  # every index of a is in b or out, and of b in a or out (true of every spec here)
    g = g.astype(x.dtype)
    dx = jnp.einsum(f"{out},{b}->{a}", g, w, preferred_element_type=_F32).astype(x.dtype)
    dw = jnp.einsum(f"{a},{out}->{b}", x, g, preferred_element_type=_F32).astype(w.dtype)
    return dx, dw


_low_precision_einsum.defvjp(_low_precision_fwd, _low_precision_bwd)
