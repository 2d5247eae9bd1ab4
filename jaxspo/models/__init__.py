"""Model definitions."""

from jaxspo.models.decoder import Decoder, KVCache, ModelConfig, param_logical_names

__all__ = ["Decoder", "KVCache", "ModelConfig", "param_logical_names"]
