"""Typed batches: frozen dataclass pytrees that describe their own fields, ranks, abstract shapes and shardings.

Every field is declared with its axes as dimension names (:data:`DIMS`), its dtype and whether its time axis
is split over the mesh's ``context`` axis. A batch type answers, for the fields an objective reads
(:attr:`jaxspo.objectives.Objective.fields`): its abstract shapes for given dimensions
(:meth:`TypedBatch.abstract`), its shardings under the logical rules of :mod:`jaxspo.sharding`
(:meth:`TypedBatch.shardings`: the leading axis by the ``batch`` rule, a time axis by the ``length`` rule)
and the dimensions of a batch of given shapes (:meth:`TypedBatch.dims_of`). Fields an objective does not
read are None (an empty pytree), so the jitted step never probes names.

The host pipeline keeps flat ``name → array`` mappings (the field names are the keys of the encoded data);
:meth:`TypedBatch.from_fields` builds the typed batch from one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding

from jaxspo.sharding import Rules, logical_to_spec

# dimension names: pairs, lists or SFT rows; padded row width; packed rows and their width (data.pack_pairs:
# several pairs per row); responses per list; selfsup's degraded sides and levels; KL samples and their width
DIMS = ("batch", "length", "rows", "width", "responses", "sides", "levels", "samples", "sample_length")
TIMED = ("length", "width")  # a time axis: split over context when it is a token row's second axis


def batch_field(dims: tuple[str, ...], dtype: Any, optional: bool = False) -> Any:
    """A batch array of axes ``dims`` (names of :data:`DIMS`) and ``dtype``; ``optional``: None unless read."""
    meta = {"dims": dims, "dtype": jnp.dtype(dtype)}
    return dataclasses.field(default=None, metadata=meta) if optional else dataclasses.field(metadata=meta)


def _token_row(optional: bool = False) -> Any:
    return batch_field(("batch", "length"), jnp.int32, optional)


def _mask_row(optional: bool = False) -> Any:
    return batch_field(("batch", "length"), jnp.bool_, optional)


def _per_pair(optional: bool = True) -> Any:
    return batch_field(("batch",), jnp.float32, optional)


class TypedBatch:
    """Shared behaviour of the batch dataclasses (their fields carry :func:`batch_field` metadata)."""

    kind: ClassVar[str]

    @classmethod
    def specs(cls) -> dict[str, tuple[tuple[str, ...], Any]]:
        """field → (dimension names, dtype), in declaration order."""
        return {f.name: (f.metadata["dims"], f.metadata["dtype"]) for f in dataclasses.fields(cls)}

    @classmethod
    def required(cls) -> tuple[str, ...]:
        """The fields every batch of this type holds."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.default is not None)

    @classmethod
    def from_fields(cls, arrays: Mapping[str, Any]) -> Any:
        """The typed batch of ``arrays``' entries that are fields of this type (others are ignored)."""
        missing = [name for name in cls.required() if name not in arrays]
        if missing:
            raise ValueError(f"a {cls.kind} batch needs the fields {missing}; got {sorted(arrays)}")
        return cls(**{name: arrays[name] for name in cls.specs() if name in arrays})

    def fields(self) -> dict[str, Any]:
        """The present fields, ``name → value`` (absent optional fields left out)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def shape(cls, name: str, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dims[d] for d in cls.specs()[name][0])

    @classmethod
    def abstract(cls, names: tuple[str, ...], dims: Mapping[str, int], shardings: Any = None) -> Any:
        """The batch of ``names`` as ``jax.ShapeDtypeStruct`` for ``dims`` (with ``shardings``, a batch of them)."""
        specs = cls.specs()
        placed = {} if shardings is None else shardings.fields()
        return cls(**{n: jax.ShapeDtypeStruct(cls.shape(n, dims), specs[n][1], sharding=placed.get(n)) for n in names})

    @classmethod
    def dims_of(cls, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
        """The dimensions of a batch whose fields have ``shapes`` (field → shape)."""
        specs, dims = cls.specs(), {}
        for name, shape in shapes.items():
            dims |= dict(zip(specs[name][0], shape))
        return dims

    @classmethod
    def shardings(cls, names: tuple[str, ...], mesh: Mesh, rules: Rules, leading: Mapping[str, int]) -> Any:
        """A batch of ``NamedSharding`` for ``names``: the leading axis (of size ``leading[dim]``) by the ``batch``
        rule; a token row's time axis (``[B, T]``, ``[R, W]``) also by the ``length`` rule over ``context``
        (every batch width divides by ``mesh.context``: :meth:`jaxspo.config.MeshConfig.width_multiple`)."""
        out, specs = {}, cls.specs()
        for name in names:
            dims = specs[name][0]
            timed = len(dims) == 2 and dims[1] in TIMED
            logical = ("batch",) + ("length",) * timed + (None,) * (len(dims) - 1 - timed)
            shape = (leading[dims[0]],) + (mesh.shape.get("context", 1),) * timed + (1,) * (len(dims) - 1 - timed)
            out[name] = NamedSharding(mesh, logical_to_spec(logical, shape, mesh, rules))
        return cls(**out)


def _register(cls: type) -> type:
    """A frozen keyword-only dataclass registered as a pytree (every field a data field)."""
    return jax.tree_util.register_dataclass(dataclasses.dataclass(frozen=True, kw_only=True)(cls))


@_register
class SFTBatch(TypedBatch):
    """Single sequences ``[B, T]``: tokens, validity and completion-token mask."""

    kind: ClassVar[str] = "sft"
    tokens: jax.Array = _token_row()
    valid: jax.Array = _mask_row()
    loss_mask: jax.Array = _mask_row()


@_register
class KLSamples(TypedBatch):
    """The KL regulariser's policy samples ``[M, P + N]`` (prompt then response), drawn before each step."""

    kind: ClassVar[str] = "kl"
    kl_tokens: jax.Array = batch_field(("samples", "sample_length"), jnp.int32, optional=True)
    kl_valid: jax.Array = batch_field(("samples", "sample_length"), jnp.bool_, optional=True)
    kl_response: jax.Array = batch_field(("samples", "sample_length"), jnp.bool_, optional=True)


@_register
class PairAddOns(KLSamples):
    """Optional per-pair fields of every pair batch: the loss offset, precomputed reference log-probs and
    selfsup's degraded copies ``[B, S, K, T]`` (with their level validity and, precomputed, reference log-probs)."""

    kind: ClassVar[str] = "pair add-ons"
    offset: jax.Array = _per_pair()
    reference_chosen_logps: jax.Array = _per_pair()
    reference_rejected_logps: jax.Array = _per_pair()
    selfsup_tokens: jax.Array = batch_field(("batch", "sides", "levels", "length"), jnp.int32, optional=True)
    selfsup_valid: jax.Array = batch_field(("batch", "sides", "levels", "length"), jnp.bool_, optional=True)
    selfsup_loss_mask: jax.Array = batch_field(("batch", "sides", "levels", "length"), jnp.bool_, optional=True)
    selfsup_level_valid: jax.Array = batch_field(("batch", "sides", "levels"), jnp.bool_, optional=True)
    selfsup_reference_logps: jax.Array = batch_field(("batch", "sides", "levels"), jnp.float32, optional=True)


@_register
class PairBatch(PairAddOns):
    """Padded pairs: chosen and rejected rows ``[B, T]`` (prompt then response), and the soft label ``[B]``."""

    kind: ClassVar[str] = "pair"
    chosen_tokens: jax.Array = _token_row()
    chosen_valid: jax.Array = _mask_row()
    chosen_loss_mask: jax.Array = _mask_row()
    rejected_tokens: jax.Array = _token_row()
    rejected_valid: jax.Array = _mask_row()
    rejected_loss_mask: jax.Array = _mask_row()
    soft_label: jax.Array = _per_pair(optional=False)


def _packed_row(dtype: Any, optional: bool = False) -> Any:
    return batch_field(("rows", "width"), dtype, optional)


@_register
class PackedPairBatch(PairAddOns):
    """Packed pairs (``data.layout: packed``, :mod:`jaxspo.data.layout`): rows ``[R, W]`` holding the prompt once
    and both responses; one pair per row (R = B), or with ``packed_pair`` (``data.pack_pairs``) each slot's pair
    index among the ``B = len(soft_label)`` pairs of its micro-batch."""

    kind: ClassVar[str] = "packed pair"
    packed_tokens: jax.Array = _packed_row(jnp.int32)
    packed_valid: jax.Array = _packed_row(jnp.bool_)
    packed_segments: jax.Array = _packed_row(jnp.int32)
    packed_positions: jax.Array = _packed_row(jnp.int32)
    packed_source: jax.Array = _packed_row(jnp.int32)
    packed_chosen_mask: jax.Array = _packed_row(jnp.bool_)
    packed_rejected_mask: jax.Array = _packed_row(jnp.bool_)
    soft_label: jax.Array = _per_pair(optional=False)
    packed_pair: jax.Array = _packed_row(jnp.int32, optional=True)


@_register
class ListBatch(KLSamples):
    """Ranked lists: n responses per prompt ``[B, n, T]``, best first, which list slots are real and the responses'
    scores ``[B, n]``."""

    kind: ClassVar[str] = "list"
    list_tokens: jax.Array = batch_field(("batch", "responses", "length"), jnp.int32)
    list_valid: jax.Array = batch_field(("batch", "responses", "length"), jnp.bool_)
    list_loss_mask: jax.Array = batch_field(("batch", "responses", "length"), jnp.bool_)
    list_mask: jax.Array = batch_field(("batch", "responses"), jnp.bool_)
    # each response's score (soft winners softmax(score/τ)); NaN for a list without scores, 0 in padding slots
    list_scores: jax.Array = batch_field(("batch", "responses"), jnp.float32)


PAIR_FIELDS = PairBatch.required()  # the padded pair arrays (scoring and the reference cache read them)
PRECOMPUTED_FIELDS = ("reference_chosen_logps", "reference_rejected_logps")
OFFSET_FIELD = "offset"  # per-pair [B] float32, read by losses registered with needs_offset
KL_FIELDS = tuple(KLSamples.specs())
SELFSUP_FIELDS = ("selfsup_tokens", "selfsup_valid", "selfsup_loss_mask", "selfsup_level_valid")
SELFSUP_REFERENCE_FIELD = "selfsup_reference_logps"
