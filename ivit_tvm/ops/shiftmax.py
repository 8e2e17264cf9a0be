"""Shiftmax (I-ViT's integer softmax over the last axis) as a TE compute definition.

Formula: `ivit_tvm.quant.functional.shiftmax` and the module docstring there.

Per element it runs in int32 where x0 allows (integer.exp_fits_int32; the int64 formula
otherwise), exactly: e = shift_exp32(q - max) in [1, 2**31 - 1]; the row sum stays int64 and
its factor (2**31-1) // min(sum, 2**31-1) is computed once per row; e * factor <= 2**31 - 1
because e <= min(sum, 2**31 - 1), so the product is an int32 multiply.
"""

from __future__ import annotations

from tvm import te, tirx

from ..quant.constants import INT32_MAX, SHIFTMAX_N
from .integer import (
    I32,
    as_int64,
    const32,
    const64,
    dtype_of,
    exp_fits_int32,
    exp_operand32,
    require_exp_x0,
    shift_exp,
    shift_exp32,
    storage_dtype,
)
from .shapes import broadcast_index, broadcast_shape, require_extent, require_int

EXP_BLOCK = "shiftmax_exp"
TABLE_SPAN = 255  # x = q - max of int8 logits lies in [-255, 0]


def _require_table(q: te.Tensor, table: te.Tensor) -> None:
    if str(q.dtype) != "int8" or tuple(int(e) for e in table.shape) != (TABLE_SPAN + 1,) \
            or str(table.dtype) != "int32":
        raise ValueError(
            f"shiftmax: exp_table needs int8 logits and a (256,) int32 table, got q {q.dtype}, "
            f"table {tuple(table.shape)} {table.dtype}"
        )


def _mask_reader(q: te.Tensor, mask: te.Tensor, window_mask: bool):
    """Return index -> bool: whether the logit of q at `index` is masked out."""
    _require_int_or_bool(mask)
    if not window_mask:
        if len(mask.shape) > len(q.shape):
            raise ValueError(
                f"shiftmax: mask has shape {tuple(mask.shape)}, more axes than q "
                f"{tuple(q.shape)}"
            )
        out_shape = broadcast_shape(q.shape, mask.shape, "shiftmax (q against mask)")
        for axis, (extent, q_extent) in enumerate(zip(out_shape, q.shape, strict=True)):
            require_extent(q_extent, extent, "shiftmax", f"q's axis {axis} against the mask")
        return lambda index: _is_set(mask[broadcast_index(mask.shape, index)])

    if len(mask.shape) != 3 or len(q.shape) < 4:
        raise ValueError(
            "shiftmax: window_mask needs mask (nW, N, N) and q (..., W, heads, N, N) with W a "
            f"multiple of nW; got mask {tuple(mask.shape)}, q {tuple(q.shape)}"
        )
    windows, rows, cols = mask.shape
    if isinstance(q.shape[-4], tirx.IntImm) and isinstance(windows, tirx.IntImm):
        if int(q.shape[-4]) % int(windows):
            raise ValueError(
                f"shiftmax: q's axis -4 has {q.shape[-4]} windows, not a multiple of the "
                f"mask's nW = {windows}"
            )
    require_extent(q.shape[-2], rows, "shiftmax", "q's axis -2 (the mask's N)")
    require_extent(q.shape[-1], cols, "shiftmax", "q's axis -1 (the mask's N)")
    return lambda index: _is_set(
        mask[tirx.floormod(index[-4], windows), index[-2], index[-1]]
    )


def _require_int_or_bool(mask: te.Tensor) -> None:
    if str(mask.dtype) != "bool":
        require_int(mask, "shiftmax", "mask")


def _is_set(value) -> tirx.PrimExpr:
    dtype = dtype_of(value)
    return value if dtype == "bool" else tirx.NE(value, tirx.const(0, dtype))


def shiftmax(
    q: te.Tensor,
    x0: int,
    out_bits: int,
    mask: te.Tensor | None = None,
    window_mask: bool = False,
    narrow: bool = True,
    exp_table: te.Tensor | None = None,
) -> te.Tensor:
    """functional.shiftmax: q (..., N) integer logits -> (..., N) int8/int16 at 2**-(out_bits-1).

    x0 = functional.exp_x0(S) (a compile-time constant). mask (bool or int, nonzero = masked
    out) is read in one of two ways:
    - window_mask=False: NumPy broadcasting against q, as functional.shiftmax (the mask may not
      be larger than q on any axis), e.g. (nW, 1, N, N) against q (B, nW, heads, N, N).
    - window_mask=True: Swin's layout, mask (nW, N, N) against q (..., W, heads, N, N) where
      W is nW or B*nW (windows batch-major): q[..., w, h, i, j] reads mask[w % nW, i, j].
    narrow: per element in int32 where exact (module docstring); False: always int64.
    exp_table: for int8 logits, (256,) int32 with entry i = functional.shift_exp(i - 255, x0,
    15) (the frontend builds it): x = q - max lies in [-255, 0], so the exponential is one load
    (index (x + 255) & 255: the mask keeps the read region bounded; a masked logit, whose x may
    lie outside, takes shift_exp(15 * x0) instead).
    """
    require_int(q, "shiftmax", "q")
    require_exp_x0(x0, "shiftmax")
    if not 2 <= out_bits <= 16:
        raise ValueError(f"shiftmax: out_bits must be in [2, 16] (int8/int16), got {out_bits}")
    masked = None if mask is None else _mask_reader(q, mask, window_mask)
    rows, length = q.shape[:-1], q.shape[-1]

    k = te.reduce_axis((0, length), name="k")

    def unmasked(index) -> tirx.PrimExpr:  # masked logits do not take part in the row max
        if masked is None:
            return q[index]
        return tirx.Select(masked(index), tirx.min_value(dtype_of(q[index])), q[index])

    row_max = te.compute(
        rows, lambda *row: te.max(unmasked((*row, k)), axis=k), name="shiftmax_row_max"
    )  # (...,) q.dtype, over the unmasked logits

    narrow = narrow and exp_fits_int32(x0, SHIFTMAX_N)
    if exp_table is not None:
        _require_table(q, exp_table)
        masked_exp = shift_exp(const64(SHIFTMAX_N * x0), x0, SHIFTMAX_N).astype(I32)  # folds

    def exp_at(index) -> tirx.PrimExpr:  # int32 (narrow, table) or int64, in [1, 2**31 - 1]
        if exp_table is not None:
            x = q[index].astype(I32) - row_max[index[:-1]].astype(I32)  # in [-255, 0] unmasked
            e = exp_table[(x + TABLE_SPAN) & TABLE_SPAN]
            return e if masked is None else tirx.Select(masked(index), masked_exp, e)
        if narrow:
            x = exp_operand32(q[index], row_max[index[:-1]], x0, SHIFTMAX_N)  # in [n*x0, 0]
            if masked is not None:
                x = tirx.Select(masked(index), const32(SHIFTMAX_N * x0), x)
            return shift_exp32(x, x0, SHIFTMAX_N)
        x = as_int64(q[index]) - as_int64(row_max[index[:-1]])  # <= 0
        if masked is not None:
            x = tirx.Select(masked(index), const64(SHIFTMAX_N * x0), x)
        return shift_exp(x, x0, SHIFTMAX_N)

    exp = te.compute(q.shape, lambda *index: exp_at(index).astype(I32), name=EXP_BLOCK)
    # (..., N) int32: every exponential once, read by the row sum and the output (a row at a
    # time on the CPU: schedules.cpu.generic computes it under the row loop)
    j = te.reduce_axis((0, length), name="j")
    row_sum = te.compute(
        rows, lambda *row: te.sum(as_int64(exp[(*row, j)]), axis=j), name="shiftmax_row_sum"
    )  # (...,) int64
    factor_dtype = I32 if narrow or exp_table is not None else "int64"
    row_factor = te.compute(
        rows,
        lambda *row: tirx.floordiv(
            const64(INT32_MAX), tirx.min(row_sum[row], const64(INT32_MAX))
        ).astype(factor_dtype),
        name="shiftmax_row_factor",
    )  # (...,) in [1, 2**31 - 1]
    return te.compute(
        q.shape,
        lambda *index: (
            (exp[index].astype(factor_dtype) * row_factor[index[:-1]]) >> (32 - out_bits)
        ).astype(storage_dtype(out_bits)),
        name="shiftmax",
    )  # (..., N) int8/int16
