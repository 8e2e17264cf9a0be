"""I-ViT quantization: integer functions (`functional`) and the modules that use them."""

from . import functional
from .modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
    quant_act_bits,
    set_calibration,
)

__all__ = [
    "functional", "IntGELU", "IntLayerNorm", "IntSoftmax", "QuantAct", "QuantConv2d",
    "QuantLinear", "QuantMatMul", "quant_act_bits", "set_calibration",
]
