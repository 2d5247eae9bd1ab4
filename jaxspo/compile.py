"""Ahead-of-time compilation of the real train step for a TPU topology, on any machine (libtpu's compiler).

``jaxspo compile CONFIG --topology v5p-128`` builds the same state and step the training loop builds
(:func:`jaxspo.train.initialise.initialise`: same objective, auxiliary state, shardings and donation) from
abstract shapes, compiles it for the named slice and reports per-device memory, capacity, fit, FLOPs per step and
compile time.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxspo.models.target import compiling_for
from jaxspo.perf import TOPOLOGY_DEVICE_KINDS, device_peak, model_flops, recomputed_flops
from jaxspo.objectives import Objective, PackedPairBatch, build_objective, switches
from jaxspo.sharding import make_mesh
from jaxspo.train.initialise import initialise
from jaxspo.lora.choose import abstract_view
from jaxspo.lora.views import AbstractView, abstract_on
from jaxspo.train.step import TrainStep
from jaxspo.train.step_flops import step_forwards

GiB = 1024**3
# name → (chips per "N" in the slice name, HBM bytes per device, devices per chip); v4/v5p names count TensorCores
# (two per chip, one megacore device), v5e/v6e names count chips.
TPU_GENERATIONS = {
    "v4": (0.5, 32 * GiB, 1),
    "v5p": (0.5, 95 * GiB, 1),
    "v5e": (1, 16 * GiB, 1),
    "v6e": (1, 32 * GiB, 1),
}
_TOPOLOGY_NAME = re.compile(r"^(?:(\d+)x)?(v4|v5p|v5e|v6e)-(\d+)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several) by its Cloud name, e.g. ``v5p-128`` or ``2xv5e-256``."""

    name: str
    generation: str
    chips: int
    slices: int
    hbm_bytes: int

    @property
    def chip_grid(self) -> str:
        """libtpu topology string: 3-D torus for v4/v5p, 2-D for v5e/v6e (``v5p:4x4x8``)."""
        if self.generation in ("v4", "v5p"):
            dims = [1, 1, 1]
            n, axis = self.chips, 0
            while n > 1:  # grow x, y, z in turn: 4 chips → 2x2x1, 8 → 2x2x2, 64 → 4x4x4
                if dims[axis] * 2 > 16 and axis == 2:
                    raise ValueError(f"{self.name}: too many chips for one slice")
                dims[axis] *= 2
                n //= 2
                axis = (axis + 1) % 3
            if self.chips >= 8:
                dims.sort()  # Cloud's names: v5p-16 2x2x2, v5p-64 2x4x4, v5p-256 4x4x8 (v5p-8 stays 2x2x1)
            return f"{self.generation}:{dims[0]}x{dims[1]}x{dims[2]}"
        side = 2 ** (int(math.log2(self.chips)) // 2)
        return f"{self.generation}:{side}x{self.chips // side}"


def parse_topology(name: str) -> Topology:
    """``v5p-128`` → 64 chips of v5p; ``2xv5e-256`` → two slices of 256 v5e chips."""
    match = _TOPOLOGY_NAME.match(name)
    if not match:
        raise ValueError(f"unknown TPU topology '{name}'; use e.g. v4-8, v5p-128, v5e-256, v6e-64 or 2xv5p-128")
    slices, generation, count = int(match.group(1) or 1), match.group(2), int(match.group(3))
    per_name, hbm, _ = TPU_GENERATIONS[generation]
    chips = int(count * per_name)
    if chips < 1 or chips & (chips - 1):
        raise ValueError(f"{name}: the chip count must be a power of two, got {chips}")
    return Topology(name, generation, chips, slices, hbm)


def topology_devices(topology: Topology) -> list:
    """Abstract TPU devices of the slice(s), from libtpu (no TPU needed)."""
    from jax.experimental import topologies

    kwargs = {"num_slices": topology.slices} if topology.slices > 1 else {}
    return list(topologies.get_topology_desc(topology_name=topology.chip_grid, platform="tpu", **kwargs).devices)


def resolve_model(cfg):
    """The config with its model architecture read from ``model.path``'s config.json when that folder exists."""
    if cfg.model.path and Path(cfg.model.path).is_dir():
        from jaxspo.models.hf_config import model_config_from_hf

        return dataclasses.replace(cfg, model=model_config_from_hf(cfg.model.path, cfg.model))
    if cfg.model.vocab_size <= 0:
        raise ValueError(
            f"model.path '{cfg.model.path}' is not a folder here, so the recipe must give the architecture "
            "(model.vocab_size is 0)"
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class _Refused:
    """Memory figures of a program the TPU compiler refused as too large (analytic arguments + its temporaries)."""

    argument_size_in_bytes: int
    temp_size_in_bytes: int
    output_size_in_bytes: int = 0
    alias_size_in_bytes: int = 0


def analytic_bytes(cfg, objective: Objective, view: AbstractView) -> dict[str, float]:
    """Bytes of params, gradients, Adam moments and the resident reference over the whole model.

    With a frozen base (LoRA) the trained params are the adapters: gradients and Adam moments are theirs, and
    params count the frozen base plus the adapters.
    """
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(view.params))
    trained = sum(math.prod(x.shape) for x in jax.tree.leaves(view.abstract))
    width = jnp.dtype(cfg.model.param_dtype).itemsize
    resident = cfg.loss.reference == "resident" and objective.reads_frozen  # the KL regulariser's too
    reference = n * width if resident else 0
    params = (n + (trained if view.frozen_base else 0)) * width
    return {
        "parameters": float(n),
        "trained_parameters": float(trained),
        "params": params,
        "grads": trained * width,
        "optimizer": 2 * trained * 4,
        "reference": reference,
    }


def batch_dims(cfg, batch: int) -> dict[str, int]:
    """The data's batch dimensions for a compile from shapes alone: ``batch`` pairs (or lists) of
    ``data.max_length`` tokens (``data.layout: packed``: ``batch`` rows of :func:`packed_width`, the longest a
    pair can pack to, which with ``data.pack_pairs`` is the largest program). Lists (``soft_spo_best_of_n``,
    ``soft_spo_ranked``) hold n = the built-in task's ``data.synthetic.responses_per_prompt`` responses (for
    other data, set it to the longest list). The objective adds the config's own (selfsup's copies, the KL
    regulariser's samples ``[M, max_prompt_length + loss.kl.max_new_tokens]``)."""
    return {
        "batch": batch,
        "length": cfg.data.max_length,
        "rows": batch,
        "width": packed_width(cfg),
        "responses": cfg.data.synthetic.responses_per_prompt,
    }


def packed_width(cfg) -> int:
    """Slots of a packed row: ``2·max_length`` (the prompt and both responses), or ``data.pack_width`` if set."""
    return (cfg.data.pack_width if switches.packs_pairs(cfg.data) else 0) or 2 * cfg.data.max_length


def longest_packed_rows(cfg, batch: int) -> dict[str, np.ndarray]:
    """``packed_positions`` and ``packed_valid`` ``[batch, width]`` (:func:`packed_width`) of the longest pair a
    packed row holds (a ``max_prompt_length`` prompt and two responses filling ``max_length``, cut at the width):
    what the model FLOPs count for a packed step compiled from shapes alone."""
    length, prompt, width = cfg.data.max_length, cfg.data.max_prompt_length, packed_width(cfg)
    response = length - prompt
    row = np.concatenate([np.arange(length), prompt + np.arange(response)])[:width]  # prompt, chosen, rejected
    positions = np.zeros((batch, width), np.int32)
    positions[:, : row.size] = row
    valid = np.zeros((batch, width), bool)
    valid[:, : row.size] = True
    return {"packed_positions": positions, "packed_valid": valid}


def compile_step(cfg, devices: list, per_device_batch: int | None = None) -> dict[str, Any]:
    """Lowers and compiles the preference train step on ``devices``; returns the report (bytes per device).

    The model is built for the devices' platform (``model.attention`` resolves for it, not for this host)."""
    with compiling_for(devices[0].platform):
        return _compile_step(cfg, devices, per_device_batch)


def abstract_step(cfg, mesh) -> tuple[Objective, TrainStep, Any, Any, AbstractView]:
    """(objective, step, abstract state, abstract frozen input, model view) of the preference phase, built
    through the loop's own initialisation (:func:`jaxspo.train.initialise.initialise`) from shapes alone, on the
    model view the config chooses (:func:`jaxspo.lora.choose.abstract_view`: the whole model, or LoRA's adapters
    on a frozen base)."""
    objective = build_objective(cfg, "preference")
    view = abstract_view(cfg, mesh)
    steps, lr, batch = max(cfg.trainer.steps, 1), cfg.optimizer.learning_rate, cfg.trainer.batch_size
    state, step = initialise(cfg, mesh, view.model, view.abstract, view.sharding, None, objective, steps, lr, batch)
    frozen = view.frozen(step.reference_sharding)
    return objective, step, abstract_on(state, step.state_sharding), frozen, view


def _compiled(step: TrainStep, state: Any, frozen: Any, batch: Any, analytic: dict, model_shards: int):
    """(compiled program or None, memory figures, seconds): None when the TPU compiler refuses it as too large."""
    start = time.perf_counter()
    try:
        compiled = step.fn.lower(state, frozen, batch).compile()
    except jax.errors.JaxRuntimeError as err:  # the TPU compiler refuses programs that exceed HBM
        needed = re.search(r"HLO temporaries \(([\d.]+)G\)", str(err))
        if "RESOURCE_EXHAUSTED" not in str(err) or not needed:
            raise
        arguments = (analytic["params"] + analytic["optimizer"] + analytic["reference"]) / model_shards
        return None, _Refused(int(arguments), int(float(needed.group(1)) * GiB)), time.perf_counter() - start
    return compiled, compiled.memory_analysis(), time.perf_counter() - start


def compiler_peak(compiled: Any, memory: Any, platform: str) -> int | None:
    """The TPU compiler's own peak of HBM per device (libtpu simulates the program's buffer liveness), or None
    where the platform gives none (XLA:CPU reports arguments + outputs) or the compiler refused the program."""
    return int(memory.peak_memory_in_bytes) if compiled is not None and platform == "tpu" else None


def _compile_step(cfg, devices: list, per_device_batch: int | None) -> dict[str, Any]:
    mesh = make_mesh(cfg.mesh.shape(), devices)
    batch_axes = mesh.shape["data"] * mesh.shape["fsdp"]
    if per_device_batch is not None:
        batch = per_device_batch * batch_axes
        cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, batch_size=batch))
    batch = cfg.trainer.batch_size
    if batch % batch_axes:
        raise ValueError(f"trainer.batch_size ({batch}) must divide by the mesh's batch axes data×fsdp = {batch_axes}")
    objective, step, state, frozen, view = abstract_step(cfg, mesh)
    analytic = analytic_bytes(cfg, objective, view)
    abstract_batch = objective.abstract_batch(batch_dims(cfg, batch), step.batch_sharding)
    examples = abstract_batch.fields()
    examples |= longest_packed_rows(cfg, batch) if objective.batch_type is PackedPairBatch else {}
    forwards = step_forwards(cfg, objective, examples, batch, frozen_base=view.frozen_base)
    model_shards = mesh.shape["fsdp"] * mesh.shape["tensor"]
    compiled, memory, seconds = _compiled(step, state, frozen, abstract_batch, analytic, model_shards)
    cost = compiled.cost_analysis() if compiled is not None else None
    cost = cost[0] if isinstance(cost, list) else cost
    peak = memory.argument_size_in_bytes + memory.output_size_in_bytes - memory.alias_size_in_bytes
    peak += memory.temp_size_in_bytes
    state_bytes = analytic["params"] + analytic["grads"] + analytic["optimizer"] + analytic["reference"]
    return {
        "devices": len(devices),
        "mesh": dict(mesh.shape),
        "global_batch": batch,
        "per_device_batch": batch / batch_axes,
        "sequence_length": cfg.data.max_length,
        "parameters": int(analytic["parameters"]),
        "trained_parameters": int(analytic["trained_parameters"]),
        "peak_bytes_per_device": int(peak),
        "compiler_peak_bytes_per_device": compiler_peak(compiled, memory, devices[0].platform),
        "argument_bytes_per_device": int(memory.argument_size_in_bytes),
        "temp_bytes_per_device": int(memory.temp_size_in_bytes),
        "analytic_state_bytes_per_device": state_bytes / model_shards,
        # XLA's cost analysis counts a scanned loop's body once, so it undercounts the layers; model FLOPs are
        # counted from the architecture and the batch (jaxspo.perf; packed: rows of the longest pair), and
        # hardware FLOPs add remat's recomputed forward.
        "xla_flops_per_step_per_device": float(cost.get("flops", float("nan"))) if cost else float("nan"),
        "model_flops_per_step": model_flops(cfg.model, forwards),
        "hardware_flops_per_step": model_flops(cfg.model, forwards) + recomputed_flops(cfg.model, forwards),
        "compile_seconds": seconds,
        "refused_by_compiler": compiled is None,  # out of HBM: temporaries from the compiler's message
    }


def mfu_report(
    model_flops_per_step: float, devices: int, device_kind: str, dtype: str, step_seconds: float | None
) -> dict[str, Any]:
    """The device kind's peak (``dtype``), the step time at 100 % MFU, and with ``step_seconds`` the implied MFU."""
    peak = device_peak(device_kind, dtype)
    report = {
        "device_kind": device_kind,
        "compute_dtype": dtype,
        "peak_flops_per_device": peak,
        "seconds_per_step_at_peak": model_flops_per_step / (peak * devices),
    }
    if step_seconds is not None:
        report |= {"step_seconds": step_seconds, "implied_mfu": model_flops_per_step / step_seconds / (peak * devices)}
    return report


def fit_report(
    cfg, topology_name: str, find_max_batch: bool = False, step_seconds: float | None = None
) -> dict[str, Any]:
    """Compiles for the topology; adds capacity, fit, the MFU figures (:func:`mfu_report`), and optionally the
    largest per-device batch that fits."""
    topology = parse_topology(topology_name)
    devices = topology_devices(topology)
    report = {
        "topology": topology.name,
        "chip_grid": topology.chip_grid,
        "capacity_bytes_per_device": topology.hbm_bytes,
    }
    report |= compile_step(cfg, devices)
    report["fits"] = report["peak_bytes_per_device"] <= topology.hbm_bytes
    report |= mfu_report(
        report["model_flops_per_step"],
        report["devices"],
        TOPOLOGY_DEVICE_KINDS[topology.generation],
        cfg.model.dtype,
        step_seconds,
    )
    if find_max_batch:
        report["max_per_device_batch"] = _max_batch(cfg, devices, topology.hbm_bytes)
    return report


def _max_batch(cfg, devices: list, capacity: int) -> int:
    """Largest per-device batch whose step fits; 0 if none.

    Peak memory is close to affine in the batch, so two compiles (batch 1 and 2) predict the answer and
    one or two more confirm it (each compile of a large model takes minutes).
    """
    peak = lambda b: compile_step(cfg, devices, b)["peak_bytes_per_device"]  # noqa: E731
    first = peak(1)
    if first > capacity:
        return 0
    slope = peak(2) - first
    guess = 1 + int((capacity - first) // slope) if slope > 0 else 1
    while guess > 1 and peak(guess) > capacity:
        guess -= 1
    while peak(guess + 1) <= capacity:
        guess += 1
    return guess


def format_report(report: dict[str, Any]) -> str:
    """Human-readable lines for the terminal."""
    gib = lambda b: f"{b / GiB:.2f} GiB"  # noqa: E731
    lines = [
        f"topology        {report['topology']} ({report['devices']} devices, {report['chip_grid']}), mesh "
        f"{report['mesh']}",
        f"model           {report['parameters'] / 1e9:.2f} B parameters ({report['trained_parameters'] / 1e6:.1f} M "
        "trained); "
        f"global batch {report['global_batch']} × {report['sequence_length']} tokens",
        f"peak memory     {'≥ ' if report['refused_by_compiler'] else ''}{gib(report['peak_bytes_per_device'])} per "
        "device (arguments + outputs − donated + temporaries) "
        f"of {gib(report['capacity_bytes_per_device'])} → fits: {'yes' if report['fits'] else 'NO'}",
        f"analytic state  {gib(report['analytic_state_bytes_per_device'])} per device (params + grads + Adam + "
        "reference)",
        f"flops           {report['model_flops_per_step']:.3e} model FLOPs per step "
        f"({report['hardware_flops_per_step']:.3e} with remat's recompute); "
        f"XLA cost analysis {report['xla_flops_per_step_per_device']:.3e} per device (scan body counted once)",
        f"mfu             peak {report['peak_flops_per_device'] / 1e12:.0f} TFLOP/s per {report['device_kind']} "
        f"device ({report['compute_dtype']}); "
        f"{report['seconds_per_step_at_peak']:.3g} s per step at 100 % MFU"
        + (
            f"; {report['implied_mfu']:.1%} MFU at {report['step_seconds']:g} s per step"
            if "implied_mfu" in report
            else ""
        ),
        f"compile         {report['compile_seconds']:.1f} s",
    ]
    if report.get("compiler_peak_bytes_per_device") is not None:
        lines.insert(
            3,
            f"compiler peak   {gib(report['compiler_peak_bytes_per_device'])} per device (the TPU compiler's "
            "simulated HBM peak: buffers live at once)",
        )
    if "max_per_device_batch" in report:
        lines.append(f"max batch       {report['max_per_device_batch']} pairs per device (each two sequences)")
    return "\n".join(lines)
