"""TFDS builders (ArrayRecord, no TensorFlow) for public preference datasets; importing registers them."""

from jaxspo.data.tfds_builders.base import PreferenceBuilder, Rejected
from jaxspo.data.tfds_builders.builders import HhRlhf, PkuSafeRlhf, UltrafeedbackBinarized
from jaxspo.data.tfds_builders.helpsteer2 import Helpsteer2
from jaxspo.data.tfds_builders.tldr import TldrComparisons

BUILDERS: dict[str, type[PreferenceBuilder]] = {
    cls.name: cls for cls in (HhRlhf, UltrafeedbackBinarized, PkuSafeRlhf, TldrComparisons, Helpsteer2)
}

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
