"""Model definitions: one decoder with switches for the supported HF architectures, and HF checkpoint I/O."""

import importlib
from typing import Any

from jaxspo.models.config import ARCHITECTURES, ModelConfig, RopeScaling

_DECODER_NAMES = ("Decoder", "KVCache", "param_logical_names")  # load on first use: the decoder imports jax
__all__ = ["ARCHITECTURES", "ModelConfig", "RopeScaling", *_DECODER_NAMES]


def __getattr__(name: str) -> Any:
    if name not in _DECODER_NAMES:
        raise AttributeError(f"module 'jaxspo.models' has no attribute '{name}'")
    return getattr(importlib.import_module("jaxspo.models.decoder"), name)
