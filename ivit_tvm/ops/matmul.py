"""Integer GEMMs with int32 accumulation: the linear layers and the attention matmuls.

Reference: `ivit_tvm.quant.functional.integer_linear` / `integer_matmul`, which accumulate in
int64 and saturate to int32. Accumulating in int32 gives the same result whenever every
partial sum fits int32 (an int32 overflow is undefined, not a wrap): always for int8 x int8
with K < 2**17 (|product| <= 2**14), and for attention's int16 probabilities x int8 values,
whose row of probabilities (>= 0) sums to at most 2**15, so |acc| <= 2**22 for any N.
"""

from __future__ import annotations

from tvm import te

from . import names
from .integer import as_int64, dtype_of, saturate_int32
from .shapes import broadcast_index, broadcast_shape, require_dtype, require_extent, require_int


def _as_i32(value):
    return value if dtype_of(value) == "int32" else value.astype("int32")


def integer_dense(
    q_x: te.Tensor, weight_q: te.Tensor, bias_q: te.Tensor | None = None
) -> te.Tensor:
    """functional.integer_linear: q_x (..., K) int8, weight_q (N, K) int8 -> (..., N) int32.

    bias_q (N,) int32 is added in int64 and saturated to int32, as the reference does.
    """
    for operand, tensor in (("q_x", q_x), ("weight_q", weight_q)):
        require_int(tensor, "integer_dense", operand)
    if len(weight_q.shape) != 2:
        raise ValueError(f"integer_dense: weight_q must be (N, K), got {tuple(weight_q.shape)}")
    out_features, reduce = weight_q.shape
    require_extent(q_x.shape[-1], reduce, "integer_dense", "q_x's last axis (K of weight_q)")
    batch = q_x.shape[:-1]

    k = te.reduce_axis((0, reduce), name="k")
    acc = te.compute(
        (*batch, out_features),
        lambda *index: te.sum(
            _as_i32(q_x[(*index[:-1], k)]) * _as_i32(weight_q[index[-1], k]), axis=k
        ),
        name=names.DENSE_ACC_BLOCK,
    )  # (..., N) int32
    if bias_q is None:
        return acc
    require_int(bias_q, "integer_dense", "bias_q")
    if len(bias_q.shape) != 1:
        raise ValueError(f"integer_dense: bias_q must be (N,), got {tuple(bias_q.shape)}")
    require_extent(bias_q.shape[0], out_features, "integer_dense", "bias_q's length (N)")
    return te.compute(
        acc.shape,
        lambda *index: saturate_int32(as_int64(acc[index]) + as_int64(bias_q[index[-1]])),
        name=names.DENSE_BIAS_BLOCK,
    )  # (..., N) int32


def integer_batch_matmul(q_a: te.Tensor, q_b: te.Tensor, transpose_b: bool = False) -> te.Tensor:
    """functional.integer_matmul: (..., M, K) x (..., K, N) -> (..., M, N) int32.

    With transpose_b, q_b is (..., N, K) (attention's q @ k^T without a transpose). Batch
    axes broadcast NumPy-style. Inputs: int8 x int8 or int16 x int8 (attention).
    """
    require_int(q_a, "integer_batch_matmul", "q_a")
    require_int(q_b, "integer_batch_matmul", "q_b")
    if len(q_a.shape) < 2 or len(q_b.shape) < 2:
        raise ValueError(
            f"integer_batch_matmul: operands need >= 2 axes, got {tuple(q_a.shape)} and "
            f"{tuple(q_b.shape)}"
        )
    rows, reduce = q_a.shape[-2:]
    reduce_b, cols = q_b.shape[-2:][::-1] if transpose_b else q_b.shape[-2:]
    require_extent(reduce_b, reduce, "integer_batch_matmul", "q_b's K (q_a's last axis)")
    batch_a, batch_b = q_a.shape[:-2], q_b.shape[:-2]
    batch = broadcast_shape(batch_a, batch_b, "integer_batch_matmul (batch axes)")

    def b_at(batch_index, k, col):
        base = broadcast_index(batch_b, batch_index)
        return q_b[(*base, col, k)] if transpose_b else q_b[(*base, k, col)]

    k = te.reduce_axis((0, reduce), name="k")
    return te.compute(
        (*batch, rows, cols),
        lambda *index: te.sum(
            _as_i32(q_a[(*broadcast_index(batch_a, index[:-2]), index[-2], k)])
            * _as_i32(b_at(index[:-2], k, index[-1])),
            axis=k,
        ),
        name=names.BATCH_MATMUL_ACC_BLOCK,
    )  # (..., M, N) int32


# ---- int16 x int8 as two 8-bit products (tensor cores multiply 8-bit operands only) -------
# q = 256 * high_byte(q) + low_byte(q) for every int16 q (arithmetic shift, two's complement),
# so q_a @ q_b = 256 * (high @ q_b) + (low @ q_b): int8 x int8 and uint8 x int8 products.


def high_byte(q: te.Tensor) -> te.Tensor:
    """q >> 8 as int8: (...) int16 -> (...) int8 in [-128, 127]."""
    return te.compute(q.shape, lambda *i: (q[i] >> 8).astype("int8"), name="high_byte")


def low_byte(q: te.Tensor) -> te.Tensor:
    """q & 255 as uint8: (...) int16 -> (...) uint8 in [0, 255]."""
    return te.compute(q.shape, lambda *i: (q[i] & 255).astype("uint8"), name="low_byte")


def integer_batch_matmul_high(q_a: te.Tensor, q_b: te.Tensor,
                              transpose_b: bool = False) -> te.Tensor:
    """high_byte(q_a) @ q_b: (..., M, K) int16 x (..., K, N) int8 -> (..., M, N) int32, the
    first half of integer_batch_matmul_low_add."""
    require_dtype(q_a, "int16", "integer_batch_matmul_high", "q_a")
    return integer_batch_matmul(high_byte(q_a), q_b, transpose_b)


def integer_batch_matmul_low_add(q_a: te.Tensor, q_b: te.Tensor, acc_high: te.Tensor,
                                 transpose_b: bool = False) -> te.Tensor:
    """q_a @ q_b = 256 * acc_high + low_byte(q_a) @ q_b, acc_high from
    integer_batch_matmul_high: (..., M, N) int32, equal to integer_batch_matmul(q_a, q_b)
    (every partial sum is bounded by the full product's, module docstring)."""
    require_dtype(q_a, "int16", "integer_batch_matmul_low_add", "q_a")
    acc_low = integer_batch_matmul(low_byte(q_a), q_b, transpose_b)  # (..., M, N) int32
    return te.compute(acc_low.shape, lambda *i: acc_high[i] * 256 + acc_low[i],
                      name="byte_products_sum")  # (..., M, N) int32
