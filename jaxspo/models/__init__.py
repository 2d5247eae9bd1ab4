"""Model definitions: one decoder with switches for the supported HF architectures, and HF checkpoint I/O."""

from jaxspo.models.config import ARCHITECTURES, ModelConfig, RopeScaling
from jaxspo.models.decoder import Decoder, KVCache, param_logical_names

__all__ = ["ARCHITECTURES", "Decoder", "KVCache", "ModelConfig", "RopeScaling", "param_logical_names"]
