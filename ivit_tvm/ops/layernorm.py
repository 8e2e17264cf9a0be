"""I-LayerNorm (integer mean, variance, Newton sqrt) as a TE compute definition.

Formula: `ivit_tvm.quant.functional.int_layernorm` and the module docstring there.
"""

from __future__ import annotations

from tvm import te, tirx

from ..quant.constants import INT32_MAX, LAYERNORM_NEWTON_START, LAYERNORM_NEWTON_STEPS
from .integer import (
    as_int64,
    const64,
    int_bits,
    newton_sqrt_step,
    round_div_half_even,
    saturate_int32,
)
from .shapes import require_extent, require_int


def _newton_stage(k: te.Tensor | None, var: te.Tensor, step: int) -> te.Tensor:
    """Newton step `step` of sqrt(var), per row; k None: the first step, from 2**16."""
    return te.compute(
        var.shape,
        lambda *row: newton_sqrt_step(
            const64(LAYERNORM_NEWTON_START) if k is None else k[row], var[row]
        ),
        name=f"layernorm_sqrt_step{step}",
    )  # (...,) int64


def int_layernorm(q: te.Tensor, bias_q: te.Tensor) -> te.Tensor:
    """functional.int_layernorm: q (..., C) integer -> (..., C) int32 at sqrt(C)/2**30 * gamma.

    bias_q: (C,) int32/int64, floor((beta / gamma) / (sqrt(C) / 2**30)). The Newton sqrt's 10
    steps are 10 per-row stages (see the note in ops.integer).
    """
    require_int(q, "int_layernorm", "q")
    require_int(bias_q, "int_layernorm", "bias_q")
    rows, channels = q.shape[:-1], q.shape[-1]
    if len(bias_q.shape) != 1:
        raise ValueError(f"int_layernorm: bias_q must be (C,), got shape {tuple(bias_q.shape)}")
    require_extent(bias_q.shape[0], channels, "int_layernorm", "bias_q's length (C)")

    k = te.reduce_axis((0, channels), name="k")
    row_sum = te.compute(
        rows, lambda *row: te.sum(as_int64(q[(*row, k)]), axis=k), name="layernorm_row_sum"
    )  # (...,) int64
    row_mean = te.compute(
        rows, lambda *row: round_div_half_even(row_sum[row], channels), name="layernorm_mean"
    )  # (...,) int64

    # q of at most 16 bits: its rounded mean fits q's dtype and (2**31-1) // std fits int32, so
    # q - mean and the factor are narrow values widened for their int64 products (the same
    # values: exact). LLVM then sees operands with >= 33 sign bits and multiplies with one
    # vpmuldq per 4 lanes on AVX2 instead of a 64 x 64-bit emulation (three vpmuludq).
    narrow = int_bits(q) <= 16

    def centered(index) -> tirx.PrimExpr:  # int64
        mean = row_mean[index[:-1]]
        return as_int64(q[index]) - as_int64(mean.astype(q.dtype) if narrow else mean)

    j = te.reduce_axis((0, channels), name="j")
    row_var = te.compute(
        rows,
        lambda *row: te.sum(centered((*row, j)) * centered((*row, j)), axis=j),
        name="layernorm_var",
    )  # (...,) int64: a sum of squares, not a mean
    row_std = None
    for step in range(1, LAYERNORM_NEWTON_STEPS + 1):
        row_std = _newton_stage(row_std, row_var, step)  # (...,) int64, at the end >= 64
    row_factor = te.compute(
        rows,
        lambda *row: tirx.floordiv(const64(INT32_MAX), row_std[row]).astype(
            "int32" if narrow else "int64"),
        name="layernorm_factor",
    )  # (...,) int32 (narrow) or int64: (2**31-1) // std
    return te.compute(
        q.shape,
        lambda *index: saturate_int32(
            ((centered(index) * as_int64(row_factor[index[:-1]])) >> 1)
            + as_int64(bias_q[index[-1]])
        ),
        name="int_layernorm",
    )  # (..., C) int32
