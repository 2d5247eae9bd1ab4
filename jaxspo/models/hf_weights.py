"""Which HF tensor holds which of our parameters, and how the layouts convert (exactly, both ways).

Our parameters keep inputs first: a projection is ``[in..., out...]`` (``q_proj [D, H, Hd]``,
``o_proj [H, Hd, D]``); torch ``nn.Linear`` stores ``[out, in]`` (transposed), GPT-2's ``Conv1D`` stores
``[in, out]``. Per-layer HF tensors (``{i}`` in the name) fill one slice of our stacked ``[L, ...]``
parameters. GPT-2's fused ``c_attn`` fills q, k and v at once. Conversions are reshapes, transposes,
splits and concatenations only, so HF → ours → HF is bit-identical in the same dtype.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np

from jaxspo.models.config import ModelConfig

ParamPath = tuple[str, ...]  # a parameter's keys in the nested param dict, e.g. ("layers", "attn", "q_proj")

# Non-persistent buffers that old checkpoints sometimes contain; never weights.
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)attn\.(masked_)?bias$")


@dataclasses.dataclass(frozen=True)
class TensorMap:
    """One HF tensor and the parameter(s) it holds.

    ``n_in``: how many leading axes of our parameter are input axes (0 for vectors: norms, biases).
    ``transpose``: HF stores the matrix ``[out, in]`` (torch Linear) rather than ``[in, out]``.
    """

    hf: str
    ours: tuple[ParamPath, ...]
    n_in: int = 1
    transpose: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    def layer_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The shape one HF tensor fills: ``shape`` without its leading ``layers`` axis if per layer."""
        return shape[1:] if self.per_layer else shape

    def name(self, layer: int | None) -> str:
        return self.hf.format(i=layer) if self.per_layer else self.hf

    def _widths(self, shapes: list[tuple[int, ...]]) -> list[int]:
        return [math.prod(s[self.n_in :]) for s in shapes]

    def hf_shape(self, shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
        """HF shape for our per-layer ``shapes`` (one per entry of ``ours``)."""
        width = sum(self._widths(shapes))
        if self.n_in == 0:
            return (width,)
        rows = math.prod(shapes[0][: self.n_in])
        return (width, rows) if self.transpose else (rows, width)

    def to_ours(self, tensor: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Splits the HF ``tensor`` into our per-layer arrays of ``shapes``."""
        matrix = tensor.T if self.transpose else tensor
        cuts = np.cumsum(self._widths(shapes))[:-1]
        return [part.reshape(shape) for part, shape in zip(np.split(matrix, cuts, axis=-1), shapes)]

    def to_hf(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`to_ours`: a C-contiguous HF tensor."""
        flat = [a.reshape(-1) if self.n_in == 0 else a.reshape(math.prod(a.shape[: self.n_in]), -1) for a in arrays]
        matrix = np.concatenate(flat, axis=-1) if len(flat) > 1 else flat[0]
        return np.ascontiguousarray(matrix.T if self.transpose else matrix)


@dataclasses.dataclass(frozen=True)
class TensorMaps:
    """All maps of a model in HF file order: embeddings, then per-layer tensors, then the final ones."""

    embeddings: list[TensorMap]
    layers: list[TensorMap]
    final: list[TensorMap]

    def __iter__(self):
        return iter(self.embeddings + self.layers + self.final)


def _linear(hf: str, ours: ParamPath, n_in: int = 1) -> TensorMap:
    return TensorMap(hf, (ours,), n_in, transpose=True)


def _vector(hf: str, ours: ParamPath) -> TensorMap:
    return TensorMap(hf, (ours,), n_in=0)


def _llama_family(cfg: ModelConfig) -> TensorMaps:
    layer = "model.layers.{i}."
    attn, mlp = ("layers", "attn"), ("layers", "mlp")
    maps = [_vector(layer + "input_layernorm.weight", ("layers", "attn_norm", "weight"))]
    maps += [_linear(f"{layer}self_attn.{p}_proj.weight", (*attn, f"{p}_proj")) for p in "qkv"]
    maps.append(_linear(layer + "self_attn.o_proj.weight", (*attn, "o_proj"), n_in=2))
    if cfg.qkv_bias:
        maps += [_vector(f"{layer}self_attn.{p}_proj.bias", (*attn, f"{p}_bias")) for p in "qkv"]
    if cfg.out_bias:
        maps.append(_vector(layer + "self_attn.o_proj.bias", (*attn, "o_bias")))
    if cfg.qk_norm:
        maps += [_vector(f"{layer}self_attn.{p}_norm.weight", (*attn, f"{p}_norm", "weight")) for p in "qk"]
    if cfg.post_norms:  # Gemma 2: HF's post_attention_layernorm normalises the attention output
        maps += [
            _vector(layer + "post_attention_layernorm.weight", ("layers", "post_attn_norm", "weight")),
            _vector(layer + "pre_feedforward_layernorm.weight", ("layers", "mlp_norm", "weight")),
            _vector(layer + "post_feedforward_layernorm.weight", ("layers", "post_mlp_norm", "weight")),
        ]
    else:
        maps.append(_vector(layer + "post_attention_layernorm.weight", ("layers", "mlp_norm", "weight")))
    maps += [_linear(f"{layer}mlp.{p}_proj.weight", (*mlp, f"{p}_proj")) for p in ("gate", "up", "down")]
    if cfg.mlp_bias:
        maps += [_vector(f"{layer}mlp.{p}_proj.bias", (*mlp, f"{p}_bias")) for p in ("gate", "up", "down")]
    final = [_vector("model.norm.weight", ("final_norm", "weight"))]
    if not cfg.tie_embeddings:
        final.append(_linear("lm_head.weight", ("lm_head",)))
    return TensorMaps([TensorMap("model.embed_tokens.weight", (("embed",),))], maps, final)


def _gpt2(cfg: ModelConfig, prefix: str) -> TensorMaps:
    layer = prefix + "h.{i}."
    attn, mlp = ("layers", "attn"), ("layers", "mlp")
    maps = [
        _vector(layer + "ln_1.weight", ("layers", "attn_norm", "weight")),
        _vector(layer + "ln_1.bias", ("layers", "attn_norm", "bias")),
        TensorMap(layer + "attn.c_attn.weight", tuple((*attn, f"{p}_proj") for p in "qkv")),
        TensorMap(layer + "attn.c_attn.bias", tuple((*attn, f"{p}_bias") for p in "qkv"), n_in=0),
        TensorMap(layer + "attn.c_proj.weight", ((*attn, "o_proj"),), n_in=2),
        _vector(layer + "attn.c_proj.bias", (*attn, "o_bias")),
        _vector(layer + "ln_2.weight", ("layers", "mlp_norm", "weight")),
        _vector(layer + "ln_2.bias", ("layers", "mlp_norm", "bias")),
        TensorMap(layer + "mlp.c_fc.weight", ((*mlp, "up_proj"),)),
        _vector(layer + "mlp.c_fc.bias", (*mlp, "up_bias")),
        TensorMap(layer + "mlp.c_proj.weight", ((*mlp, "down_proj"),)),
        _vector(layer + "mlp.c_proj.bias", (*mlp, "down_bias")),
    ]
    embeddings = [TensorMap(prefix + "wte.weight", (("embed",),)), TensorMap(prefix + "wpe.weight", (("pos_embed",),))]
    final = [
        _vector(prefix + "ln_f.weight", ("final_norm", "weight")),
        _vector(prefix + "ln_f.bias", ("final_norm", "bias")),
    ]
    if not cfg.tie_embeddings:
        final.append(_linear("lm_head.weight", ("lm_head",)))
    return TensorMaps(embeddings, maps, final)


def tensor_maps(cfg: ModelConfig, gpt2_prefix: str = "transformer.") -> TensorMaps:
    """The maps for ``cfg``'s architecture. ``gpt2_prefix`` is "" for original GPT-2 files (``h.0...``)."""
    return _gpt2(cfg, gpt2_prefix) if cfg.arch == "gpt2" else _llama_family(cfg)
