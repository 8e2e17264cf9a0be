"""Scalar integer building blocks (TIR expressions) shared by the TE operators.

Each helper is the expression-level twin of a function in `ivit_tvm.quant.functional`, whose
module docstring holds the formulas. Every helper computes in int64 and keeps each shift
amount inside [0, 63] at runtime, so no expression relies on undefined behaviour.

The helpers build plain expressions, without Let: TVM 0.27's simplifier inlines every pure Let
anyway (TIR's CommonSubexprElim shares the repeated terms again later), and inlining a Let whose
value holds another Let binds the inner variable twice, which aborts LLVM codegen ("Binding of
variable ... conflicts with previous binding"). A chain that reads a value twice per step
(Newton's k) therefore needs one stage per step, or its expression doubles with every step.
"""

from __future__ import annotations

from numbers import Integral

from tvm import DataType, te, tirx

from ..quant.constants import (
    INT32_MAX,
    INT32_MIN,
    MAX_SHIFT,
    qrange,
)

I64 = "int64"
MAX_EXP_SHIFT = 31  # shift_exp's left-shift clamp, as in functional.shift_exp


def const64(value: int) -> tirx.PrimExpr:
    """An int64 TIR constant (Python ints would otherwise turn into int32)."""
    return tirx.const(int(value), I64)


def dtype_of(value) -> str:
    """The dtype string of a TIR expression, a te tensor or one of its elements (`T.int8` ->
    "int8"; a te.Tensor's `ty` is opaque, its `dtype` is the element's)."""
    if isinstance(value, te.Tensor):
        return str(value.dtype)
    return str(value.ty if hasattr(value, "ty") else value.dtype)


def as_int64(value: tirx.PrimExpr | int) -> tirx.PrimExpr:
    """Widen an integer expression (or Python int) to int64."""
    if isinstance(value, int):
        return const64(value)
    return value.astype(I64) if dtype_of(value) != I64 else value


def clamp(value: tirx.PrimExpr, low: int, high: int) -> tirx.PrimExpr:
    """min(max(value, low), high) with the bounds in value's dtype."""
    low_c = tirx.const(low, dtype_of(value))
    high_c = tirx.const(high, dtype_of(value))
    return tirx.min(tirx.max(value, low_c), high_c)


def storage_dtype(bits: int) -> str:
    """The TVM dtype of functional.storage_dtype(bits), for 2 <= bits <= 32."""
    if not 2 <= bits <= 32:
        raise ValueError(f"integer outputs take 2..32 bits, got bits={bits}")
    if bits <= 8:
        return "int8"
    if bits <= 16:
        return "int16"
    return "int32"


def clamp_bits(value: tirx.PrimExpr, bits: int) -> tirx.PrimExpr:
    """functional.clamp_bits: saturate an int64 value to b signed bits, cast to storage dtype."""
    low, high = qrange(bits)
    return clamp(value, low, high).astype(storage_dtype(bits))


def saturate_int32(value: tirx.PrimExpr) -> tirx.PrimExpr:
    """Clamp an int64 value to the int32 range and cast it to int32."""
    return clamp(value, INT32_MIN, INT32_MAX).astype("int32")


def rshift_round(x: tirx.PrimExpr, shift: tirx.PrimExpr | int) -> tirx.PrimExpr:
    """functional.rshift_round: round_half_even(x / 2**shift) of an int64 x.

    A Python int shift must lie in [1, 62] (functional.dyadic's range); a runtime shift is
    clamped into it, so a corrupt shift tensor cannot reach an out-of-range shift.
    """
    x = as_int64(x)
    if isinstance(shift, int):
        if not 1 <= shift <= MAX_SHIFT:
            raise ValueError(f"rshift_round needs 1 <= shift <= {MAX_SHIFT}, got {shift}")
        half_minus_one = const64((1 << (shift - 1)) - 1)
        shift = const64(shift)
    else:
        shift = clamp(as_int64(shift), 1, MAX_SHIFT)
        half_minus_one = (const64(1) << (shift - 1)) - 1
    return (x + half_minus_one + ((x >> shift) & 1)) >> shift


def round_div_half_even(numerator: tirx.PrimExpr, divisor: tirx.PrimExpr | int):
    """functional.round_div_half_even: round_half_even(numerator / divisor), divisor > 0."""
    numerator = as_int64(numerator)
    divisor = as_int64(divisor)
    quotient = tirx.floordiv(numerator, divisor)
    twice_rem = (numerator - quotient * divisor) * 2
    up = tirx.any(twice_rem > divisor, tirx.all(twice_rem == divisor, (quotient & 1) == 1))
    return quotient + up.astype(I64)


def newton_sqrt_step(k: tirx.PrimExpr, var: tirx.PrimExpr) -> tirx.PrimExpr:
    """One step of functional.integer_sqrt_newton: (k + var // k) // 2, for var >= 0, k >= 1."""
    return tirx.floordiv(k + tirx.floordiv(var, k), 2)


def require_exp_x0(x0: int, op: str) -> None:
    """Raise ValueError unless x0 is functional.exp_x0's negative integer floor(-1/S)."""
    if not isinstance(x0, Integral) or x0 >= 0:
        raise ValueError(
            f"{op} needs x0 = floor(-1/S) < 0 as an int (functional.exp_x0 / gelu_x0), got {x0!r}"
        )


def shift_exp(x: tirx.PrimExpr, x0: int, n: int) -> tirx.PrimExpr:
    """functional.shift_exp: 2**n * exp(x * S) as int64 in [1, 2**31 - 1].

    x0 = floor(-1/S) < 0 and n (fractional bits) are compile-time constants.
    """
    require_exp_x0(x0, "shift_exp")
    x0 = int(x0)
    x = as_int64(x)
    x_log2 = tirx.max(x + (x >> 1) - (x >> 4), const64(n * x0))  # x * log2(e), clamped
    qt = tirx.floordiv(-x_log2, const64(-x0))  # = floor(x_log2 / x0) <= n, positive divisor
    v = x_log2 - qt * x0 - 2 * x0  # r - 2*x0 in (-x0, -2*x0], with r = x_log2 - x0*qt
    shift = (n - 1) - qt  # >= -1
    # v << clamp(shift, 0, 31) when shift >= 0, else v >> 1. Not a Select: inside one the
    # simplifier drops the clamp's lower bound, leaving v << -1 in the arm it does not pick
    # (poison in LLVM, undefined in CUDA C).
    e = (v << clamp(shift, 0, MAX_EXP_SHIFT)) >> (shift < 0).astype(I64)
    return tirx.min(e, const64(INT32_MAX))


# ---- shift_exp in int32 ----------------------------------------------------------------------
# shift_exp is defined in int64; on exponents it only ever sees (x = q - max(q) <= 0, x0 fixed at
# compile time) every intermediate fits int32 once x is clamped first, which doubles the vector
# lanes and avoids 64-bit multiplies (AVX2 has none; with AVX-512DQ the int64 form measured
# faster, so the frontend keeps it there: Capabilities.int64_vectors). Why it is exact:
#   f(x) = x + (x >> 1) - (x >> 4) is nondecreasing (a step of x changes it by 1 + {0, 1} -
#   {0, 1} >= 0) and f(c) <= c for c = n*x0 <= -3, so max(f(x), c) == max(f(max(x, c)), c):
#   clamping x at c before f changes nothing (exp_operand32 clamps);
#   with x in [c, 0]: |x + (x >> 1)| <= 1.5*n*|x0| + 1; x_log2 in [c, 0], qt in [0, n],
#   v in (-x0, -2*x0], shift in [-1, n-1]: all within int32 when 2*n*|x0| <= 2**31 - 1
#   (exp_fits_int32), which holds for every input scale above ~2e-8;
#   the saturating left shift min(v << s, 2**31 - 1) is computed in uint32 (shift_exp32).
# Guards against overflow are written in uint32, not as min(a, M - b) + b: TVM's simplifier
# rewrites that to min(a + b, M), which overflows int32 (seen: ShiftGELU's sum e1 + e2). And
# no Select or comparison: Relax's emit_te normalizes int32 in conditions to int64 (its index
# dtype), which drags the whole expression back to int64.
# tests/ops/test_ops.py holds these against functional.shift_exp on every x of the range for
# small |x0|, on the boundaries and at random for the largest |x0| allowed.
I32, U32 = "int32", "uint32"


def const32(value: int) -> tirx.PrimExpr:
    return tirx.const(int(value), I32)


def exp_fits_int32(x0: int, n: int) -> bool:
    """Whether shift_exp32 is exact for these compile-time constants (see above)."""
    require_exp_x0(x0, "exp_fits_int32")
    return 2 * n * -int(x0) <= INT32_MAX


def int_bits(value) -> int:
    """The bit width of an integer expression's or tensor element's dtype."""
    dtype = dtype_of(value)
    return 8 if dtype == "bool" else DataType(dtype).bits


def exp_operand32(q: tirx.PrimExpr, row_max: tirx.PrimExpr, x0: int, n: int) -> tirx.PrimExpr:
    """max(q - row_max, n*x0) as int32, for q <= row_max: shift_exp's operand, clamped first.

    Inputs of up to 16 bits subtract in int32; wider ones in int64 before the clamp narrows."""
    low = n * int(x0)
    if int_bits(q) <= 16 and int_bits(row_max) <= 16:
        return tirx.max(q.astype(I32) - row_max.astype(I32), const32(low))
    return tirx.max(as_int64(q) - as_int64(row_max), const64(low)).astype(I32)


def shift_exp32(x: tirx.PrimExpr, x0: int, n: int) -> tirx.PrimExpr:
    """shift_exp in int32 for x (int32) in [n*x0, 0] (exp_operand32) when exp_fits_int32."""
    if not exp_fits_int32(x0, n):
        raise ValueError(f"shift_exp32: 2*n*|x0| = {2 * n * -x0} exceeds int32; use shift_exp")
    x0 = int(x0)
    x_log2 = tirx.max(x + (x >> 1) - (x >> 4), const32(n * x0))  # in [n*x0, 0]
    qt = tirx.floordiv(-x_log2, const32(-x0))  # in [0, n]
    v = x_log2 - qt * x0 - 2 * x0  # in (-x0, -2*x0]
    shift = (n - 1) - qt  # in [-1, n - 1]
    amount = clamp(shift, 0, MAX_EXP_SHIFT).astype(U32)
    # min(v << s, 2**31 - 1): v clamped to (2**31-1 >> s) + 1 first, so v << s <= 2**31 fits
    # uint32, and any v above that limit still shifts past 2**31 - 1 and saturates.
    limit = (tirx.const(INT32_MAX, U32) >> amount) + tirx.const(1, U32)
    shifted = tirx.min(v.astype(U32), limit) << amount  # <= 2**31
    saturated = tirx.min(shifted, tirx.const(INT32_MAX, U32)).astype(I32)
    return saturated >> tirx.max(-shift, const32(0))  # shift = -1: v >> 1 (v < 2**31 there)


def add_saturate32(a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
    """min(a + b, 2**31 - 1) for int32 a, b in [0, 2**31 - 1], without overflow (uint32 sum)."""
    total = a.astype(U32) + b.astype(U32)  # <= 2**32 - 2
    return tirx.min(total, tirx.const(INT32_MAX, U32)).astype(I32)
