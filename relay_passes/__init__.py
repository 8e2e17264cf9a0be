"""Graph-level Relax passes for integer I-ViT modules (Relax replaced Relay in TVM).

Each pass is a module with one job:
- verify_integer: VerifyIntegerOnly, no float value between input quantization and logits;
- fuse_requantize: FuseRequantize, GEMM + requantize in one PrimFunc.

The compile driver runs `integer_pipeline()` before the target backend's build. Weights stay
(N, K) here: the CPU backend packs them for its own GEMM (schedules/cpu/packing.py).
"""

from __future__ import annotations

import tvm

from .fuse_requantize import FuseRequantize
from .verify_integer import IntegerOnlyError, VerifyIntegerOnly, verify_integer_only


def integer_pipeline() -> tvm.transform.Pass:
    """Verify, fuse requantize into GEMMs, verify again."""
    return tvm.transform.Sequential(
        [VerifyIntegerOnly(), FuseRequantize(), VerifyIntegerOnly()],
        name="IntegerPipeline",
    )


__all__ = [
    "FuseRequantize",
    "IntegerOnlyError",
    "VerifyIntegerOnly",
    "integer_pipeline",
    "verify_integer_only",
]
