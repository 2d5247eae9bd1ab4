"""TFDS builders (ArrayRecord, no TensorFlow) for public preference datasets; importing registers them."""

from jaxspo.data.tfds_builders.base import PreferenceBuilder, Rejected
from jaxspo.data.tfds_builders.builders import (
    BUILDERS,
    Helpsteer2,
    HhRlhf,
    PkuSafeRlhf,
    TldrComparisons,
    UltrafeedbackBinarized,
)

__all__ = [
    "BUILDERS",
    "Helpsteer2",
    "HhRlhf",
    "PkuSafeRlhf",
    "PreferenceBuilder",
    "Rejected",
    "TldrComparisons",
    "UltrafeedbackBinarized",
]
