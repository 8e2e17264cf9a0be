"""TVM TE compute definitions of I-ViT's integer functions, bit-exact with the reference.

Each operator is the compiled twin of a function in `ivit_tvm.quant.functional` (formulas in
its module docstring) and plugs into Relax through the BlockBuilder:

    bb.emit_te(requantize, q, multiplier=m, shift=s, bits=8, primfunc_name_hint="ivit_requant")

Scale-derived constants (Python ints: per-tensor multiplier/shift, x0, bit widths) are baked
into the kernel; per-channel multiplier/shift and biases are tensors.
"""

from .integer import rshift_round, shift_exp
from .layernorm import int_layernorm
from .matmul import (
    integer_batch_matmul,
    integer_batch_matmul_high,
    integer_batch_matmul_low_add,
    integer_dense,
)
from .requantize import requantize, requantize_add
from .shiftgelu import shiftgelu, shiftgelu_lookup
from .shiftmax import shiftmax

__all__ = [
    "int_layernorm",
    "integer_batch_matmul",
    "integer_batch_matmul_high",
    "integer_batch_matmul_low_add",
    "integer_dense",
    "requantize",
    "requantize_add",
    "rshift_round",
    "shift_exp",
    "shiftgelu",
    "shiftgelu_lookup",
    "shiftmax",
]
