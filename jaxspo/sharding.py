"""Device mesh from config, and logical axis names → mesh axes.

Models name the logical axes of every parameter and activation (``batch``, ``length``, ``embed``,
``heads``, ``kv_heads``, ``head_dim``, ``mlp``, ``vocab``, ``layers``, ``norm``); a rule table maps each
logical name to zero or more mesh axes (``data``, ``fsdp``, ``tensor``, ``context``). Parallelism changes by
config. ``context`` splits the time axis (``length``) of activations: context parallelism for long sequences.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxspo.errors import ConfigError
from jaxspo.sharding_rules import DEFAULT_RULES as DEFAULT_RULES  # re-exported: the default rules are read from here
from jaxspo.sharding_rules import MESH_AXES, MeshAxes, Rules


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor, context) mesh. ``shape`` maps axis → size (a missing axis is 1); one size
    may be -1 (= the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"mesh: unknown axis {sorted(unknown)}; valid axes are {MESH_AXES}")
    sizes = [int(shape.get(axis, 1)) for axis in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ConfigError(
            f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}; set the others to sizes"
        )
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if len(devices) % known:
            raise ConfigError(
                f"mesh: {len(devices)} devices do not divide by {known} (the product of the mesh sizes "
                f"other than the -1); choose sizes that divide {len(devices)}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ConfigError(
            f"mesh: shape {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
            f"but {len(devices)} are available; set one of mesh.data / mesh.fsdp / mesh.tensor to -1 (the rest)"
        )
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> PartitionSpec:
    """Partition spec for an array of ``shape`` whose axes carry logical ``names``.

    A mesh axis is used at most once per array, and only where it divides the dimension evenly
    (otherwise that dimension stays replicated along it), so any rule table is safe for any shape.
    """
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for name, dim in zip(names, shape):
        if name is not None and name not in rules:
            raise KeyError(f"no sharding rule for logical axis '{name}'; rules cover {sorted(rules)}")
        chosen: list[str] = []
        for axis in _as_tuple(rules.get(name) if name else None):
            size = mesh.shape[axis]
            if axis in used or size == 1:
                continue
            if dim % (math.prod(mesh.shape[a] for a in chosen) * size) == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> NamedSharding:
    """NamedSharding for one array; see :func:`logical_to_spec`."""
    return NamedSharding(mesh, logical_to_spec(names, shape, mesh, rules))


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "jaxspo_activation_sharding", default=None
)


def active_sharding() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) of the enclosing :func:`activation_sharding` at trace time, or None outside one."""
    return _ACTIVE.get()


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """While active (at trace time), :func:`with_logical_constraint` pins activations to the mesh."""
    token = _ACTIVE.set((mesh, rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def with_logical_constraint(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Constrains activation ``x`` to the sharding of its logical axis ``names`` (no-op outside a mesh)."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(names, x.shape, mesh, rules))
