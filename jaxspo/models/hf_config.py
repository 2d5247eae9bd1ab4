"""HF ``config.json`` ↔ :class:`ModelConfig`, for every supported architecture (``ARCHITECTURES``).

Reading goes through transformers' own config classes (never ``trust_remote_code``), so defaults and
legacy keys (``rope_scaling``, ``torch_dtype``) are resolved exactly as transformers resolves them.
Writing maps back and then reads its own output again: a switch that the target architecture cannot
express is refused instead of silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import transformers

from jaxspo.errors import CheckpointError
from jaxspo.models.config import ACTIVATIONS, ARCHITECTURES, ROPE_TYPES, ModelConfig, RopeScaling

# Fields that never come from config.json: the run's numerics and where the weights live.
NUMERIC_FIELDS = (
    "path",
    "reference_path",
    "dtype",
    "param_dtype",
    "remat",
    "remat_policy",
    "scan_unroll",
    "attention",
    "attention_block",
    "context_attention",
    "logprob_chunk",
    "init_std",
)


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle(path: Path) -> None:
    """Raises CheckpointError if ``path`` is a pickle checkpoint (never opened: unpickling can run code)."""
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: refusing to load a pickle checkpoint (unpickling can run arbitrary code); save the "
            "model as safetensors, e.g. model.save_pretrained(dir, safe_serialization=True)"
        )


def check_folder(folder: str | Path) -> Path:
    """``folder`` as a Path if it is a directory, else CheckpointError (the pickle refusal for a .bin file)."""
    folder = Path(folder)
    if not folder.is_dir():
        refuse_pickle(folder)
        raise CheckpointError(f"{folder}: not a folder (model.path must be a Hugging Face model folder)")
    return folder


def read_hf_config(folder: str | Path) -> transformers.PretrainedConfig:
    """The folder's config.json as transformers' config object; refuses unsupported ``model_type``."""
    path = check_folder(folder) / "config.json"
    if not path.is_file():
        for file in sorted(path.parent.iterdir()):
            refuse_pickle(file)  # a folder of pickle weights: say that first, it is the real problem
        raise CheckpointError(
            f"{path}: not found; model.path must be a Hugging Face model folder (config.json, safetensors, tokenizer)"
        )
    try:
        model_type = json.loads(path.read_bytes()).get("model_type")
    except (ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a JSON object ({err}); restore the model's config.json") from None
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not supported; supported: {', '.join(ARCHITECTURES)}"
        )
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as err:  # transformers' complaints about the file's values
        raise CheckpointError(f"{path}: transformers cannot read it ({err}); restore the model's config.json") from None


def _require(ok: bool, where: str, message: str) -> None:
    if not ok:
        raise CheckpointError(f"{where}: {message}")


def _activation(name: str, where: str) -> str:
    _require(name in ACTIVATIONS, where, f"activation {name!r} is not supported; supported: {ACTIVATIONS}")
    return name


def _rope(hf: transformers.PretrainedConfig, where: str) -> dict[str, Any]:
    params = dict(hf.rope_parameters or {})
    kind = params.get("rope_type", "default")
    _require(kind in ROPE_TYPES, where, f"rope_type {kind!r} is not supported; supported: {ROPE_TYPES}")
    _require(params.get("partial_rotary_factor", 1.0) == 1.0, where, "partial_rotary_factor != 1 is not supported")
    keys = {"linear": ["factor"], "llama3": [f.name for f in dataclasses.fields(RopeScaling) if f.name != "type"]}
    scaling = RopeScaling(type=kind, **{k: params[k] for k in keys.get(kind, [])})
    return {"rope_theta": float(params["rope_theta"]), "rope_scaling": scaling}


def _sliding(layer_types: list[str] | None, window: int | None) -> dict[str, Any]:
    """Normal form: no sliding layer means ``layer_types=[]`` and ``sliding_window=0``."""
    types = list(layer_types or [])
    if "sliding_attention" not in types or not window:
        return {"layer_types": [], "sliding_window": 0}
    return {"layer_types": types, "sliding_window": int(window)}


def _llama_family(hf: transformers.PretrainedConfig, where: str) -> dict[str, Any]:
    """Fields shared by the Llama-family configs (Llama, Mistral, Qwen2/3, Gemma/2)."""
    heads = hf.num_attention_heads
    return {
        "vocab_size": hf.vocab_size,
        "hidden_size": hf.hidden_size,
        "intermediate_size": hf.intermediate_size,
        "num_layers": hf.num_hidden_layers,
        "num_heads": heads,
        "num_kv_heads": hf.num_key_value_heads or heads,
        "head_dim": getattr(hf, "head_dim", None) or hf.hidden_size // heads,
        "max_position_embeddings": hf.max_position_embeddings,
        "rms_norm_eps": hf.rms_norm_eps,
        "tie_embeddings": bool(hf.tie_word_embeddings),
        "activation": _activation(getattr(hf, "hidden_activation", None) or hf.hidden_act, where),
        **_rope(hf, where),
    }


def _from_llama(hf, where):
    bias = bool(hf.attention_bias)
    return _llama_family(hf, where) | {"qkv_bias": bias, "out_bias": bias, "mlp_bias": bool(hf.mlp_bias)}


def _from_mistral(hf, where):
    window = hf.sliding_window
    return _llama_family(hf, where) | _sliding(["sliding_attention"] * hf.num_hidden_layers, window)


def _from_qwen2(hf, where):
    return _llama_family(hf, where) | {"qkv_bias": True} | _sliding(hf.layer_types, hf.sliding_window)


def _from_qwen3(hf, where):
    bias = bool(hf.attention_bias)
    sliding = _sliding(hf.layer_types, hf.sliding_window)
    return _llama_family(hf, where) | {"qk_norm": True, "qkv_bias": bias, "out_bias": bias} | sliding


def _from_gemma(hf, where):
    _require(
        not getattr(hf, "use_bidirectional_attention", False), where, "use_bidirectional_attention is not supported"
    )
    bias = bool(hf.attention_bias)
    return _llama_family(hf, where) | {
        "norm": "gemma_rmsnorm",
        "scale_embeddings": True,
        "qkv_bias": bias,
        "out_bias": bias,
    }


def _from_gemma2(hf, where):
    return (
        _from_gemma(hf, where)
        | _sliding(hf.layer_types, hf.sliding_window)
        | {
            "post_norms": True,
            "query_pre_attn_scalar": float(hf.query_pre_attn_scalar),
            "attn_softcap": float(hf.attn_logit_softcapping or 0.0),
            "final_softcap": float(hf.final_logit_softcapping or 0.0),
        }
    )


def _from_gpt2(hf, where):
    _require(not hf.scale_attn_by_inverse_layer_idx, where, "scale_attn_by_inverse_layer_idx is not supported")
    _require(not hf.add_cross_attention, where, "add_cross_attention is not supported")
    return {
        "vocab_size": hf.vocab_size,
        "hidden_size": hf.n_embd,
        "intermediate_size": hf.n_inner or 4 * hf.n_embd,
        "num_layers": hf.n_layer,
        "num_heads": hf.n_head,
        "num_kv_heads": hf.n_head,
        "max_position_embeddings": hf.n_positions,
        "positions": "learned",
        "norm": "layernorm",
        "rms_norm_eps": hf.layer_norm_epsilon,
        "activation": _activation(hf.activation_function, where),
        "gated_mlp": False,
        "qkv_bias": True,
        "out_bias": True,
        "mlp_bias": True,
        "query_pre_attn_scalar": 0.0 if hf.scale_attn_weights else 1.0,
        "tie_embeddings": bool(hf.tie_word_embeddings),
    }


_FROM_HF = {
    "llama": _from_llama,
    "mistral": _from_mistral,
    "qwen2": _from_qwen2,
    "qwen3": _from_qwen3,
    "gemma": _from_gemma,
    "gemma2": _from_gemma2,
    "gpt2": _from_gpt2,
}


def _architecture(cfg: ModelConfig) -> dict[str, Any]:
    """The fields that define the function computed, in a normal form (resolved head_dim, sliding layers)."""
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in NUMERIC_FIELDS}
    fields["head_dim"] = cfg.resolved_head_dim
    fields["layer_types"] = cfg.sliding_layers
    fields["sliding_window"] = cfg.sliding_window if any(cfg.sliding_layers) else 0
    return fields


def model_config_from_hf(folder: str | Path, base: ModelConfig) -> ModelConfig:
    """ModelConfig of the HF folder, keeping ``base``'s numerics and paths.

    A ``base`` architecture field set away from its default must agree with config.json (else
    CheckpointError naming both), so a recipe cannot silently describe a different model than it loads.
    """
    hf = read_hf_config(folder)
    where = str(Path(folder) / "config.json")
    loaded = ModelConfig(arch=hf.model_type, **_FROM_HF[hf.model_type](hf, where))
    loaded = dataclasses.replace(loaded, **{name: getattr(base, name) for name in NUMERIC_FIELDS})
    default, wanted, got = _architecture(ModelConfig()), _architecture(base), _architecture(loaded)
    for name, value in wanted.items():
        if value != default[name] and value != got[name]:
            raise CheckpointError(
                f"{where}: {name} is {got[name]!r} but the recipe sets model.{name}={value!r}; "
                "with model.path the architecture comes from config.json, so drop that key"
            )
    try:
        loaded.validate()
    except ValueError as err:
        raise CheckpointError(f"{where}: {err}") from None
    return loaded


def _to_llama_family(cfg: ModelConfig) -> dict[str, Any]:
    scaling = {k: v for k, v in dataclasses.asdict(cfg.rope_scaling).items() if k != "type"}
    keep = {"linear": ("factor",), "llama3": tuple(scaling)}.get(cfg.rope_scaling.type, ())
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.resolved_head_dim,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": cfg.activation,
        "rope_parameters": {"rope_type": cfg.rope_scaling.type, "rope_theta": cfg.rope_theta}
        | {k: scaling[k] for k in keep},
    }


def _layer_types(cfg: ModelConfig) -> list[str]:
    return ["sliding_attention" if s else "full_attention" for s in cfg.sliding_layers]


def _to_hf_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments of the HF config class of ``cfg.arch``."""
    sliding = any(cfg.sliding_layers)
    window = cfg.sliding_window if sliding else None
    if cfg.arch == "gpt2":
        return {
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.hidden_size,
            "n_inner": cfg.intermediate_size,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_positions": cfg.max_position_embeddings,
            "layer_norm_epsilon": cfg.rms_norm_eps,
            "activation_function": cfg.activation,
            "scale_attn_weights": cfg.query_pre_attn_scalar != 1.0,
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    kwargs = _to_llama_family(cfg)
    if cfg.arch == "llama":
        return kwargs | {"attention_bias": cfg.qkv_bias, "mlp_bias": cfg.mlp_bias}
    if cfg.arch == "mistral":
        return kwargs | {"sliding_window": window}
    if cfg.arch in ("qwen2", "qwen3"):
        kwargs |= {"use_sliding_window": sliding, "sliding_window": window, "layer_types": _layer_types(cfg)}
        return kwargs | ({"attention_bias": cfg.qkv_bias} if cfg.arch == "qwen3" else {})
    kwargs |= {"attention_bias": cfg.qkv_bias}
    if cfg.arch == "gemma":
        return kwargs
    return kwargs | {
        "hidden_activation": kwargs.pop("hidden_act"),
        "query_pre_attn_scalar": int(cfg.query_pre_attn_scalar),  # an int in HF Gemma 2
        "attn_logit_softcapping": cfg.attn_softcap or None,
        "final_logit_softcapping": cfg.final_softcap or None,
        "sliding_window": cfg.sliding_window or 4096,
        "layer_types": _layer_types(cfg),
    }


def hf_config_from_model(
    cfg: ModelConfig, dtype: str, token_ids: dict[str, int | None]
) -> transformers.PretrainedConfig:
    """The transformers config that computes what ``cfg`` computes, as architecture ``cfg.arch``.

    ``token_ids`` holds ``bos_token_id``, ``eos_token_id`` and ``pad_token_id``; ``dtype`` is the weights' dtype.
    Raises CheckpointError naming the first switch that ``cfg.arch`` cannot express.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    )  # imports torch: only on export

    hf = transformers.AutoConfig.for_model(
        cfg.arch,
        **_to_hf_kwargs(cfg),
        **token_ids,
        dtype=dtype,
        architectures=[MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[cfg.arch]],
    )
    back = _architecture(ModelConfig(arch=cfg.arch, **_FROM_HF[cfg.arch](hf, cfg.arch)))
    for name, value in _architecture(cfg).items():
        if back[name] != value:
            raise CheckpointError(
                f"model.{name}={value!r} cannot be expressed as a {cfg.arch!r} config.json "
                f"(it would become {back[name]!r}); choose a model.arch that has it"
            )
    return hf


def check_same_architecture(folder: str | Path, cfg: ModelConfig) -> None:
    """Raises CheckpointError unless the HF folder holds a model of exactly ``cfg``'s architecture."""
    other = _architecture(model_config_from_hf(folder, ModelConfig()))
    for name, value in _architecture(cfg).items():
        if other[name] != value:
            raise CheckpointError(
                f"{Path(folder) / 'config.json'}: {name} is {other[name]!r} but the policy's is {value!r}; "
                "the reference must have the policy's architecture"
            )
