"""LoRA adapters in PEFT's format: ``adapter_config.json`` + ``adapter_model.safetensors``.

PEFT names an adapter's tensors after the module it wraps, without the adapter name, e.g.
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`` ``[r, in]`` and ``….lora_B.weight``
``[out, r]`` (torch ``Linear`` layout; GPT-2's ``Conv1D`` modules use the same shapes, with
``fan_in_fan_out``). Its update is ``(lora_alpha / r) · B A x``, the same as ours (no rsLoRA), so
``PeftModel.from_pretrained(hf_base, DIR)`` computes what jaxspo's adapted model computes.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util
from safetensors.numpy import save_file

from jaxspo.distributed import to_host
from jaxspo.lora.adapters import hf_layer_prefix, hf_modules
from jaxspo.lora.merge import adapter_targets
from jaxspo.lora.model import AdaptedModel

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def _module_key(module: tuple[str, ...]) -> tuple[str, str]:
    """``("layers", "attn", "q_lora")`` → ``("attn", "q_proj")`` (the key of :func:`hf_modules`)."""
    return module[-2], module[-1].removesuffix("_lora") + "_proj"


def peft_tensors(model: AdaptedModel, adapters: nnx.State, dtype: str = "") -> dict[str, np.ndarray]:
    """PEFT state dict of ``adapters``: per layer and adapted module, ``lora_A.weight [r, in]``,
    ``lora_B.weight [out, r]``."""
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(adapters))
    names = hf_modules(model.model_cfg)
    prefix = "base_model.model." + hf_layer_prefix(model.model_cfg)
    out = {}
    for module in adapter_targets(adapters):
        a, b = to_host(flat[(*module, "a")]), to_host(flat[(*module, "b")])  # [L, *in, r], [L, r, *out]
        target = jnp.dtype(dtype or a.dtype)
        rank = a.shape[-1]
        for layer in range(a.shape[0]):
            name = prefix.format(i=layer) + names[_module_key(module)]
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a[layer].reshape(-1, rank).T).astype(target)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b[layer].reshape(rank, -1).T).astype(target)
    return out


def save_peft(
    model: AdaptedModel, adapters: nnx.State, out_dir: str | Path, base_model: str = "", dtype: str = ""
) -> Path:
    """Writes ``adapter_config.json`` and ``adapter_model.safetensors`` to ``out_dir`` (process 0 writes)."""
    out_dir = Path(out_dir)
    tensors = peft_tensors(model, adapters, dtype)
    lora, cfg = model.lora_cfg, model.model_cfg
    modules = hf_modules(cfg)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model or None,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": sorted(modules[key] for key in model.spec.projections),
        "bias": "none",
        "fan_in_fan_out": cfg.arch == "gpt2",  # GPT-2's Conv1D stores [in, out]
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    if jax.process_index() == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        (out_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir
