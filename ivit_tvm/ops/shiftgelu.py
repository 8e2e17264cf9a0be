"""ShiftGELU (I-ViT's integer GELU, x * sigmoid(1.702 x)) as a TE compute definition.

Formula: `ivit_tvm.quant.functional.shiftgelu` and the module docstring there.

Per element it runs in int32 where x0 allows (integer.exp_fits_int32; the int64 formula
otherwise), exactly: e1 = shift_exp32(q - max) and e2 = shift_exp(-max) (once per row, int64,
then <= 2**31 - 1) are in [1, 2**31 - 1], min(e1 + e2, 2**31 - 1) is a uint32 sum (never
overflows), and e1 * ((2**31-1) // total) <= 2**31 - 1 because e1 <= total. The final
q * sigmoid is int32 for inputs of up to 16 bits (|q * 127| < 2**23); an int32 q multiplies in
int64 and wraps on the cast, as the reference's .to(torch.int32).
"""

from __future__ import annotations

from tvm import te, tirx

from ..quant.constants import GELU_SIGMOID_BITS, INT32_MAX, SHIFTGELU_N
from .integer import (
    I32,
    add_saturate32,
    as_int64,
    const32,
    const64,
    exp_fits_int32,
    exp_operand32,
    int_bits,
    require_exp_x0,
    shift_exp,
    shift_exp32,
)
from .shapes import require_int


def shiftgelu(q: te.Tensor, x0: int, narrow: bool = True) -> te.Tensor:
    """functional.shiftgelu: q (..., C) integer at scale S -> (..., C) int32 at S * 2**-7.

    x0 = functional.gelu_x0(S), a compile-time constant. The row max runs over the last axis.
    narrow: per element in int32 where exact (module docstring); False: always int64.
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
        lambda *row: shift_exp(-as_int64(row_max[row]), x0, SHIFTGELU_N).astype(I32),
        name="shiftgelu_row_exp",
    )  # (...,) int32 in [1, 2**31 - 1]: shift_exp(-max), the sigmoid's second term
    narrow = narrow and exp_fits_int32(x0, SHIFTGELU_N)

    def gelu_at(*index) -> tirx.PrimExpr:  # int32
        q_i, q_max, e_max = q[index], row_max[index[:-1]], row_exp[index[:-1]]
        if not narrow:
            e = shift_exp(as_int64(q_i) - as_int64(q_max), x0, SHIFTGELU_N)  # int64
            total = tirx.min(e + as_int64(e_max), const64(INT32_MAX))
            sigmoid = (e * tirx.floordiv(const64(INT32_MAX), total)) >> (32 - GELU_SIGMOID_BITS)
            return (as_int64(q_i) * sigmoid).astype(I32)  # wraps like torch's .to(torch.int32)
        e = shift_exp32(exp_operand32(q_i, q_max, x0, SHIFTGELU_N), x0, SHIFTGELU_N)  # int32
        total = add_saturate32(e, e_max)  # min(e + e_max, 2**31 - 1)
        factor = tirx.floordiv(const32(INT32_MAX), total)  # int32 in [1, 2**31 - 1]
        sigmoid = (e * factor) >> (32 - GELU_SIGMOID_BITS)  # int32 in [0, 127]
        if int_bits(q_i) <= 16:
            return q_i.astype(I32) * sigmoid
        return (as_int64(q_i) * sigmoid.astype("int64")).astype(I32)  # wraps like .to(int32)

    return te.compute(q.shape, gelu_at, name="shiftgelu")  # (..., C) int32


TABLE_OFFSET = 128  # int8 value v sits at table index v + 128
LOOKUP_BLOCK = "shiftgelu_lookup"
ROW_MAX_BLOCK = "shiftgelu_row_max"


def shiftgelu_lookup(q: te.Tensor, table: te.Tensor) -> te.Tensor:
    """ShiftGELU of an int8 q (..., C) by table: out[..., c] = table[max(q[...]) + 128,
    q[..., c] + 128], table (256, 256) holding for each row max m and value v <= m the
    output of shiftgelu (and whatever the frontend fused after it: the next requantize) on v
    in a row whose max is m. The output depends on nothing else, so the table is exact by
    construction (frontend/graph.py builds it from functional.shiftgelu); per element this is
    one load instead of the exponential, a division and the requantize's int64 multiply.
    The column index is masked with & 255 (a no-op on q + 128) so that the block's read region
    of the table is [0:256], which lets the CPU schedule take a table row at a time
    (schedules/cpu/lookup.py)."""
    require_int(q, "shiftgelu_lookup", "q")
    if str(q.dtype) != "int8" or tuple(int(e) for e in table.shape) != (256, 256):
        raise ValueError(
            f"shiftgelu_lookup: needs int8 q and a (256, 256) table, got q {q.dtype}, "
            f"table {tuple(table.shape)}"
        )
    rows, channels = q.shape[:-1], q.shape[-1]
    k = te.reduce_axis((0, channels), name="k")
    row_max = te.compute(
        rows, lambda *row: te.max(q[(*row, k)], axis=k), name=ROW_MAX_BLOCK
    )  # (...,) int8
    return te.compute(
        q.shape,
        lambda *index: table[row_max[index[:-1]].astype(I32) + TABLE_OFFSET,
                             (q[index].astype(I32) + TABLE_OFFSET) & 255],
        name=LOOKUP_BLOCK,
    )  # (..., C) table.dtype
