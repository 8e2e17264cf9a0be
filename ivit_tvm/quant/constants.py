"""The fixed numbers of I-ViT's integer functions, without torch: the TIR kernels
(ivit_tvm.ops) and the Relax passes read them from here. functional.py's docstrings say what
each one means in its formula.
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
SHIFTMAX_N = 15  # fractional bits of Shiftmax's exponential
SHIFTGELU_N = 23  # fractional bits of ShiftGELU's exponential
GELU_SIGMOID_ALPHA = 1.702  # GELU(x) ~ x * sigmoid(1.702 x)
GELU_SIGMOID_BITS = 8  # sigmoid output bits: scale 2**-7
LAYERNORM_NEWTON_STEPS = 10
LAYERNORM_NEWTON_START = 2**16
MAX_SHIFT = 62  # largest right shift a dyadic multiplier may use (int64 product stays exact)


def qrange(bits: int) -> tuple[int, int]:
    """The symmetric signed range [-2**(b-1), 2**(b-1)-1] of a b-bit integer."""
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
