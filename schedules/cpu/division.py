"""Vectorizable integer division: int64 and int32 floordiv through float64, where that is exact.

x86 has no vector integer division, and no 64-bit multiply-high for LLVM's division by a
constant either: an int64 `a // b` inside a vectorized loop becomes one scalar division per
lane. ShiftGELU divides once per element ((2**31 - 1) // (e + e_max)), as does shift_exp's
`x_log2 // x0`. With float64,

    floordiv(a, b) == int64(floor(float64(a) / float64(b)))   whenever |a| < 2**53, b != 0:

the rounded quotient errs by at most |a/b| * 2**-53 < 1/|b|, less than the distance from a
non-integer quotient a/b to the next integer, and an integer quotient is exact; a huge |b|
only rounds to another huge double of the same sign. This pass rewrites each int64 floordiv
in a PrimFunc's data expressions whose numerator the analyzer bounds below 2**53 (constants,
values loaded from narrow buffers); divisions by a constant power of two stay shifts, and
index arithmetic (symbolic, unbounded) is left alone. An int32 division by a variable (ShiftGELU
in int32, ops/integer.py) has the same problem and |a| < 2**31: it goes through float64 too; an
int32 division by a constant stays, for LLVM's vectorized multiply-high (pmuldq).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.ir.prim.expr import FloorDiv

EXACT_BITS = 53  # float64 holds every integer of magnitude below 2**53


def _power_of_two(value: tirx.PrimExpr) -> bool:
    if not isinstance(value, tirx.IntImm):
        return False
    magnitude = abs(int(value))
    return magnitude > 0 and magnitude & (magnitude - 1) == 0


def exact_in_float64(numerator: tirx.PrimExpr, analyzer) -> bool:
    bound = analyzer.const_int_bound(numerator)
    limit = 1 << EXACT_BITS
    return -limit < int(bound.min_value) and int(bound.max_value) < limit


def _through_float64(a: tirx.PrimExpr, b: tirx.PrimExpr, dtype: str) -> tirx.PrimExpr:
    quotient = tirx.floor(a.astype("float64") / b.astype("float64"))
    return quotient.astype(dtype)


def rewrite_divisions(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The PrimFunc with its exact-in-float64 int64 floordivs rewritten (see the module)."""
    analyzer = tvm.sym.Analyzer()

    def floordiv(node: FloorDiv, mutator) -> tirx.PrimExpr:
        a, b = mutator.mutate(node.a), mutator.mutate(node.b)
        dtype = str(node.ty)
        if (
            (dtype == "int64" and not _power_of_two(b) and exact_in_float64(a, analyzer))
            or (dtype == "int32" and not isinstance(b, tirx.IntImm))
        ):
            return _through_float64(a, b, dtype)
        return tirx.floordiv(a, b) if not (a.same_as(node.a) and b.same_as(node.b)) else node

    def keep_load(load: TensorLoad, _mutator) -> TensorLoad:
        return load  # indices are address arithmetic: not rewritten

    body = tvm_ffi.structural_mutate(func.body, [(TensorLoad, keep_load), (FloorDiv, floordiv)])
    return func.with_body(body)
