"""Tiny random transformers (PyTorch) models of every supported architecture, built offline from configs.

Shared by the ``test_hf_*`` files. Weights are redrawn N(0, 0.2) (norm scales around their identity) so
that logits are O(1) and a wrong mapping, transpose or missing switch shows up far above 1e-4.
"""

from __future__ import annotations

import copy

from pathlib import Path

import numpy as np
import torch
import transformers

from jaxspo.data.tokenizer import build_task_tokenizer

VOCAB = 64
_LLAMA_FAMILY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
)
_ROPE = {"rope_type": "default", "rope_theta": 500.0}
# Llama 3 scaling with thresholds that put the 4 frequencies of head_dim 8 in all three bands.
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 100.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

CONFIGS: dict[str, transformers.PretrainedConfig] = {
    "llama2": transformers.LlamaConfig(**_LLAMA_FAMILY, rope_parameters=_ROPE, tie_word_embeddings=False),
    "llama3": transformers.LlamaConfig(
        **_LLAMA_FAMILY, rope_parameters=_LLAMA3_ROPE, attention_bias=True, mlp_bias=True, tie_word_embeddings=True
    ),
    "mistral": transformers.MistralConfig(**_LLAMA_FAMILY, rope_parameters=_ROPE, sliding_window=3),
    "qwen2": transformers.Qwen2Config(
        **_LLAMA_FAMILY,
        rope_parameters=_ROPE,
        use_sliding_window=True,
        sliding_window=3,
        max_window_layers=1,
        tie_word_embeddings=True,
    ),
    "qwen3": transformers.Qwen3Config(**_LLAMA_FAMILY, head_dim=16, rope_parameters=_ROPE, tie_word_embeddings=False),
    "gemma": transformers.GemmaConfig(**_LLAMA_FAMILY, head_dim=16, rope_parameters=_ROPE),
    "gemma2": transformers.Gemma2Config(
        **_LLAMA_FAMILY,
        head_dim=16,
        rope_parameters=_ROPE,
        sliding_window=3,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=1.5,
        final_logit_softcapping=2.0,
    ),
    "gpt2": transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    ),
}
ARCHS = tuple(CONFIGS)


def build_hf(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    """The tiny float32 eager-attention PyTorch model ``name`` (a key of CONFIGS) with O(1) random weights."""
    config = copy.deepcopy(CONFIGS[name])  # saving in bf16/fp16 mutates a config's dtype: never share one
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").float().eval()
    return redraw(model)


def redraw(model: transformers.PreTrainedModel) -> transformers.PreTrainedModel:
    """``model`` with every weight redrawn N(0, 0.2), norm scales N(1, 0.2) (Gemma's, stored as scale − 1: N(0,
    0.2))."""
    gemma_norm = model.config.model_type in ("gemma", "gemma2")
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            is_norm_scale = ("norm" in param_name or ".ln_" in param_name) and param_name.endswith("weight")
            p.normal_(1.0 if is_norm_scale and not gemma_norm else 0.0, 0.2)
    return model


def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """The task's word-level tokenizer (20 ids < VOCAB) with a chat template, as a stand-in for the model's."""
    tok = build_task_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def save(model: transformers.PreTrainedModel, folder: Path, dtype: torch.dtype = torch.float32, **kwargs) -> Path:
    """Saves ``model`` in ``dtype`` (safetensors) with the tokenizer; returns ``folder``."""
    model.to(dtype).save_pretrained(folder, **kwargs)
    model.float()
    tokenizer().save_pretrained(folder)
    return folder


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tokens, valid, positions ``[6, 7]``: rows of 7, 4, 2 tokens padded on the right, then 6, 3, 2 on the left."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(6, 7)).astype(np.int32)
    columns = np.arange(7)[None]
    valid = np.concatenate([columns < np.array([[7], [4], [2]]), columns >= 7 - np.array([[6], [3], [2]])])
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return tokens, valid, positions


def hf_forward(model: transformers.PreTrainedModel, tokens, valid, positions) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch logits ``[B, T, V]`` and residual stream ``[L + 1, B, T, D]`` (layer-0 input, each layer's output)."""
    layers = model.transformer.h if model.config.model_type == "gpt2" else model.model.layers
    captured = []
    hooks = [layers[0].register_forward_pre_hook(lambda _, args: captured.append(args[0]))]
    hooks += [layer.register_forward_hook(lambda _, __, out: captured.append(out)) for layer in layers]
    try:
        with torch.no_grad():
            logits = model(
                input_ids=torch.from_numpy(tokens).long(),
                attention_mask=torch.from_numpy(valid).long(),
                position_ids=torch.from_numpy(positions).long(),
            ).logits
    finally:
        for hook in hooks:
            hook.remove()
    hidden = [h[0] if isinstance(h, tuple) else h for h in captured]
    return logits.float().numpy(), torch.stack(hidden).float().numpy()
