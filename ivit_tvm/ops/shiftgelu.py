"""ShiftGELU (I-ViT's integer GELU, x * sigmoid(1.702 x)) as a TE compute definition.

Formula: `ivit_tvm.quant.functional.shiftgelu` and the module docstring there.
"""

from __future__ import annotations

from tvm import te, tirx

from ..quant.constants import GELU_SIGMOID_BITS, INT32_MAX, SHIFTGELU_N
from .integer import as_int64, const64, require_exp_x0, shift_exp
from .shapes import require_int


def shiftgelu(q: te.Tensor, x0: int) -> te.Tensor:
    """functional.shiftgelu: q (..., C) integer at scale S -> (..., C) int32 at S * 2**-7.

    x0 = functional.gelu_x0(S), a compile-time constant. The row max runs over the last axis.
    """
    require_int(q, "shiftgelu", "q")
    require_exp_x0(x0, "shiftgelu")
    rows, channels = q.shape[:-1], q.shape[-1]

    k = te.reduce_axis((0, channels), name="k")
    row_max = te.compute(
        rows, lambda *row: te.max(q[(*row, k)], axis=k), name="shiftgelu_row_max"
    )  # (...,) q.dtype
    row_exp = te.compute(
        rows,
        lambda *row: shift_exp(-as_int64(row_max[row]), x0, SHIFTGELU_N),
        name="shiftgelu_row_exp",
    )  # (...,) int64: shift_exp(-max), the sigmoid's second term

    def gelu_at(*index) -> tirx.PrimExpr:  # int32
        q_i64 = as_int64(q[index])
        e = shift_exp(q_i64 - as_int64(row_max[index[:-1]]), x0, SHIFTGELU_N)  # int64
        total = tirx.min(e + row_exp[index[:-1]], const64(INT32_MAX))
        factor = tirx.floordiv(const64(INT32_MAX), total)
        sigmoid = (e * factor) >> (32 - GELU_SIGMOID_BITS)  # int64 in [0, 127]
        return (q_i64 * sigmoid).astype("int32")  # wraps like torch's .to(torch.int32)

    return te.compute(q.shape, gelu_at, name="shiftgelu")  # (..., C) int32
