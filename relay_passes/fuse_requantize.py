"""FuseRequantize: fold the requantize after an integer GEMM into one PrimFunc.

`call_tir(ivit_dense*|ivit_batch_matmul*)` whose only consumer is `call_tir(ivit_requantize*)`
becomes one call of `fused_<gemm>_<requantize>`: the GEMM's blocks followed by the requantize
epilogue, with the int32 accumulator a buffer local to the PrimFunc (a schedule inlines it into
registers) instead of a tensor between two kernels. Matching is by the frontend's PrimFunc names
(numbered duplicates included), grouping by relax.transform.FuseOpsByPattern and merging by
relax.transform.FuseTIR, so the fused body is the two original bodies, bit for bit.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import GlobalVarPattern, TuplePattern, is_op, wildcard

from ivit_tvm.ops import names

from .module_utils import drop_orphans

GEMM_NAME = names.GEMM_FUNC
REQUANTIZE_NAME = names.REQUANTIZE_FUNC
PATTERN_NAME = "ivit.gemm_requantize"
REQUANTIZE_PARAM_COUNTS = (0, 2)  # per-tensor (baked in) or per-channel (multiplier, shift)


def _call_tir(args) -> relax.dpl.DFPattern:
    return is_op("relax.call_tir")(GlobalVarPattern(), args, add_constraint=False)


def _callee_name(call: relax.Call) -> str:
    return call.args[0].name_hint


def _only_consumer(context, gemm: relax.Call) -> bool:
    """True when the GEMM's result is bound to a variable used exactly once (by requantize)."""
    var = context.value_to_bound_var.get(gemm)
    return var is not None and len(context.var_usages.get(var, [])) == 1


def _check(context) -> bool:
    requantize = context.annotated_expr["requantize"]
    gemm = context.annotated_expr["gemm"]
    return (
        REQUANTIZE_NAME.fullmatch(_callee_name(requantize)) is not None
        and GEMM_NAME.fullmatch(_callee_name(gemm)) is not None
        and _only_consumer(context, gemm)
    )


def gemm_requantize_patterns() -> list[relax.transform.FusionPattern]:
    """requantize(gemm(...), *params) for each requantize arity; names checked in _check."""
    patterns = []
    for param_count in REQUANTIZE_PARAM_COUNTS:
        gemm = _call_tir(wildcard())
        params = [wildcard() for _ in range(param_count)]  # distinct: one object matches once
        requantize = _call_tir(TuplePattern([gemm, *params]))
        patterns.append(relax.transform.FusionPattern(
            PATTERN_NAME, requantize, {"gemm": gemm, "requantize": requantize}, _check
        ))
    return patterns


@tvm.transform.module_pass(opt_level=0, name="FuseRequantize")
class FuseRequantize:
    """GEMM + requantize -> one fused PrimFunc (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        grouped = relax.transform.FuseOpsByPattern(
            gemm_requantize_patterns(), bind_constants=False
        )(mod)
        return drop_orphans(mod, relax.transform.FuseTIR()(grouped))  # drop the unfused parts
