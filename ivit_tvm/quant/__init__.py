"""I-ViT quantization: integer functions (`functional`), their constants (`constants`, no
torch) and the modules that use them.

The modules load on first use (PEP 562), so `ivit_tvm.quant.constants` (what the TIR kernels
read) never pulls in torch.
"""

from __future__ import annotations

import importlib

_MODULE_EXPORTS = (
    "IntGELU", "IntLayerNorm", "IntSoftmax", "QuantAct", "QuantConv2d", "QuantLinear",
    "QuantMatMul", "quant_act_bits", "set_calibration",
)

__all__ = ["constants", "functional", *_MODULE_EXPORTS]


def __getattr__(name: str):
    if name in ("constants", "functional", "modules"):
        return importlib.import_module(f"{__name__}.{name}")
    if name in _MODULE_EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.modules"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
