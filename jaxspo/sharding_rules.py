"""The mesh axes and the default logical-axis rules (``mesh.rules``): plain data, so the config imports no jax."""

from __future__ import annotations

from collections.abc import Mapping

MESH_AXES = ("data", "fsdp", "tensor", "context")

MeshAxes = str | list[str] | tuple[str, ...] | None
Rules = Mapping[str, MeshAxes]

DEFAULT_RULES: dict[str, MeshAxes] = {
    "batch": ["data", "fsdp"],
    "length": "context",
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "layers": None,
    "norm": None,
}
