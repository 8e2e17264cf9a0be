"""The requantize's rounding shift through float64, where that is exact.

ops.integer.rshift_round builds round_half_even(x / 2**s) of an int64 x as

    (x + (2**(s-1) - 1) + ((x >> s) & 1)) >> s          (s a compile-time constant)

which x86 vectorizes 8 lanes wide in 64-bit integer ops (a sign extension, a 64-bit multiply for
x = a * m, two arithmetic shifts, an and, two adds). Where the analyzer bounds |x| below 2**53,

    rshift_round(x, s) == int64(nearbyint(float64(x) * 2**-s))

exactly: float64(x) is exact, scaling by a power of two is exact (no underflow for s <= 62),
and nearbyint rounds half to even in the default rounding mode, as the integer form does. For
x = int64(a) * m with a constant m, float64(a) * (m * 2**-s) is the same single product (m has
fewer than 53 significant bits, so m * 2**-s is exact too): a convert, a multiply and a round
per lane. Used for q @ k^T's epilogue (rules.PackedAttention.finish: its int32 values are
bounded by head_dim * 2**14, matmul.packed_qk states the bound), where it measured faster.
It would apply to a residual add's int8/int16 operand too (|x| < 2**46), but there it measured
slower (rules.py). Run on scheduled PrimFuncs: the bound comes from the expressions inlined
into the epilogue, not from the int32 buffer between them.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad

from .division import EXACT_BITS, exact_in_float64

INT32_LIMIT = 2**31 - 1  # |round(x / 2**s)| below this: the double converts to int32


def _is_int(node, value: int) -> bool:
    return isinstance(node, tirx.IntImm) and int(node) == value


def _parity_terms(expr, shift: int) -> list:
    """The (x >> shift) & 1 operands of a tree of int64 additions and subtractions."""
    if isinstance(expr, tirx.Add | tirx.Sub):
        return _parity_terms(expr.a, shift) + _parity_terms(expr.b, shift)
    if isinstance(expr, tirx.BitwiseAnd) and _is_int(expr.b, 1) and \
            isinstance(expr.a, tirx.RShift) and _is_int(expr.a.b, shift):
        return [expr]
    return []


def _rounding_shift(node, analyzer) -> tuple[tirx.PrimExpr, int] | None:
    """(x, s) when node is rshift_round(x, s) with a constant s, else None. TE's constructors
    fold and reorder the sum (x = q * -m arrives as parity + half - q * m), so the sum is
    matched by the simplifier against x + half + parity for the x in its parity term."""
    if not isinstance(node, tirx.RShift) or str(node.ty.dtype) != "int64":
        return None
    total, shift = node.a, node.b
    if not isinstance(shift, tirx.IntImm) or not 1 <= int(shift) <= 62:
        return None
    s = int(shift)
    half = tirx.IntImm("int64", (1 << (s - 1)) - 1)
    for parity in _parity_terms(total, s):
        x = parity.a.a
        if analyzer.can_prove_equal(total, x + half + parity):
            return x, s
    return None


def _scaled(x: tirx.PrimExpr, s: int) -> tirx.PrimExpr:
    """float64 x * 2**-s as one product (see the module)."""
    scale = 2.0**-s
    if isinstance(x, tirx.Mul) and isinstance(x.b, tirx.IntImm) and abs(int(x.b)) < 1 << EXACT_BITS:
        return tirx.Cast("float64", x.a) * tirx.FloatImm("float64", int(x.b) * scale)
    return tirx.Cast("float64", x) * tirx.FloatImm("float64", scale)


def _fits_int32(x: tirx.PrimExpr, s: int, analyzer) -> bool:
    """Whether round(x / 2**s) provably fits int32 (then the double converts to int32)."""
    bound = analyzer.const_int_bound(x)
    return max(-int(bound.min_value), int(bound.max_value)) >> s < INT32_LIMIT


def rewrite_rounding_shifts(func: tirx.PrimFunc, int64_converts: bool) -> tirx.PrimFunc:
    """The PrimFunc with each rshift_round whose operand the analyzer bounds below 2**53 in
    magnitude computed through float64 (see the module). The rounded double converts to int32
    where the result fits (one vcvtpd2dq, AVX included), else to int64 only if
    `int64_converts` (AVX-512DQ's vcvtpd2qq; without it LLVM converts lane by lane, and the
    integer form stays)."""
    analyzer = tvm.sym.Analyzer()

    def shift(node, mutator):
        node = mutator.default_mutate(node)
        found = _rounding_shift(node, analyzer)
        if found is None or not exact_in_float64(found[0], analyzer):
            return node
        x, s = found
        rounded = tirx.nearbyint(_scaled(x, s))
        if _fits_int32(x, s, analyzer):
            return tirx.Cast("int64", tirx.Cast("int32", rounded))
        return tirx.Cast("int64", rounded) if int64_converts else node

    def keep_load(load: TensorLoad, _mutator) -> TensorLoad:
        return load  # indices are address arithmetic: not rewritten

    body = tvm_ffi.structural_mutate(func.body, [(TensorLoad, keep_load), (tirx.RShift, shift)])
    return func.with_body(body)
