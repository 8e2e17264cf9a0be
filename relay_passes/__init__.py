"""Graph-level Relax passes for integer I-ViT modules (Relax replaced Relay in TVM).

Each pass is a module with one job:
- verify_integer: VerifyIntegerOnly, no float value between input quantization and logits;
- fuse_requantize: FuseRequantize, GEMM + requantize in one PrimFunc;
- pack_weights: PackWeights, constant dense weights in the target GEMM's layout.

The compile driver runs `integer_pipeline(target.kind.name)` before `tvm.compile`.
"""

from __future__ import annotations

import tvm

from .fuse_requantize import FuseRequantize
from .pack_weights import VNNI, BlockedLayout, PackWeights, layout_for_target
from .verify_integer import IntegerOnlyError, VerifyIntegerOnly, verify_integer_only


def integer_pipeline(target_kind: str, pack_weights: bool = True) -> tvm.transform.Pass:
    """Verify, fuse requantize into GEMMs, pack weights for target_kind, verify again.

    pack_weights=False keeps the (N, K) weights, for a build pipeline that packs them itself.
    """
    layout = layout_for_target(target_kind)
    return tvm.transform.Sequential(
        [
            VerifyIntegerOnly(),
            FuseRequantize(),
            PackWeights(layout if pack_weights else None),
            VerifyIntegerOnly(),
        ],
        name="IntegerPipeline",
    )


__all__ = [
    "VNNI",
    "BlockedLayout",
    "FuseRequantize",
    "IntegerOnlyError",
    "PackWeights",
    "VerifyIntegerOnly",
    "integer_pipeline",
    "layout_for_target",
    "verify_integer_only",
]
