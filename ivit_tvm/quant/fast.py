"""`functional`'s integer functions evaluated faster, still exactly.

`functional` is the definition; each function here returns what its namesake there returns,
bit for bit, for every input it accepts, and falls back to `functional` where its proof does
not hold (tests/quant/test_fast.py holds the two equal, exhaustively where inputs are 8-bit).
The speed comes from three exact substitutions for int64 arithmetic, which has no AVX2 vector
multiply or arithmetic right shift and no BLAS:

- Integer matmuls as float GEMMs. Every partial sum of an integer dot product is an integer
  bounded by K * max|a| * max|b|; a float whose mantissa holds that bound adds and multiplies
  those integers exactly in any order (float32: < 2**24, float64: < 2**53). int8 x int8 is
  exact in float32 up to K = 1032 (127 * 128 per term); longer dot products are cut into
  chunks of that length, each an exact float32 GEMM, summed in float64.
- Requantization in float64: round_half_even(q * m / 2**s) = torch.round(q * (m * 2**-s)).
  m * 2**-s is exact (m < 2**31, s <= 62); the product is exact when |q| * m < 2**53 (it is a
  <= 53-bit integer times a power of two); torch.round rounds half to even. Larger inputs
  (I-LayerNorm's int32 outputs) take functional's int64 path.
- Tables for the exponentials. A Shiftmax row's x = q - max(q) of 8-bit q takes at most 256
  values, so shift_exp is a 256-entry table; ShiftGELU's output q * sigmoid depends only on
  (q, max of its row): a 256 x 256 table. The tables are computed by `functional` itself.

Inputs are integer tensors or float tensors holding integers (the fake-quant path's
round(x / S)); outputs are the storage dtypes `functional` returns, or float64 integer values
where the name ends in `_values`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import functional as qf
from .constants import INT32_MAX, INT32_MIN, SHIFTMAX_N, qrange

FLOAT32_EXACT = 2**24  # integers below this are exact in float32, and so are their sums
FLOAT64_EXACT = 2**53
EXP_TABLE_LIMIT = 2**16  # largest Shiftmax exponent table (x = q - max spans fewer values)
GELU_TABLE_WIDTH = 256  # ShiftGELU table: inputs spanning at most 256 values (8-bit)
SMALL_INT_BOUND = {torch.int8: 128, torch.uint8: 255, torch.int16: 2**15}
SMALL_INT_RANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255),
                   torch.int16: (-(2**15), 2**15 - 1)}


# ---- bounds -----------------------------------------------------------------------------------


def value_range(q: torch.Tensor) -> tuple[int, int] | None:
    """(min, max) of an integer or integer-valued float tensor: from the dtype for 8/16-bit
    integers (no pass over the data), else measured; None when not finite."""
    if q.dtype in SMALL_INT_RANGE:
        return SMALL_INT_RANGE[q.dtype]
    if q.numel() == 0:
        return 0, 0
    low, high = torch.aminmax(q.detach())
    low, high = low.item(), high.item()
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return int(low), int(high)


def max_abs(q: torch.Tensor) -> int | None:
    """max |q| (an upper bound from the dtype for 8/16-bit integers); None when not finite."""
    if q.dtype in SMALL_INT_BOUND:
        return SMALL_INT_BOUND[q.dtype]
    bounds = value_range(q)
    return None if bounds is None else max(-bounds[0], bounds[1])


def float32_gemm_allowed() -> bool:
    """float32 GEMMs are IEEE float32 (not bf16/tf32) only at matmul precision 'highest'."""
    return torch.get_float32_matmul_precision() == "highest"


def _as_int64(q: torch.Tensor) -> torch.Tensor:
    """Integer values as int64 for functional (exact for integer-valued floats)."""
    return q.to(torch.int64)


# ---- requantization -----------------------------------------------------------------------------


def dyadic_factor(multiplier, shift) -> torch.Tensor:
    """multiplier * 2**-shift as a 1-D float64 tensor (exact: |multiplier| < 2**31, shift <= 62).

    1-D, never 0-dim, so that `q * factor` promotes an integer or float32 q to float64."""
    m = torch.as_tensor(multiplier, dtype=torch.int64).reshape(-1)
    s = torch.as_tensor(shift, dtype=torch.int64).reshape(-1)
    return m.to(torch.float64) * torch.pow(2.0, -s.to(torch.float64))


def _scaled_rounded(q: torch.Tensor, multiplier, shift, q_bound: int | None):
    """round_half_even(q * m / 2**s) as float64 integers, or None where not provably exact."""
    m_bound = int(torch.as_tensor(multiplier, dtype=torch.int64).abs().max())
    if q_bound is None or q_bound * m_bound >= FLOAT64_EXACT:
        return None
    factor = dyadic_factor(multiplier, shift).to(q.device)  # (1,) or (C,) float64
    return torch.mul(q, factor).round_()  # (..., C) float64, one pass from any dtype


def requantize_values(q: torch.Tensor, multiplier, shift, bits: int) -> torch.Tensor:
    """functional.requantize as float64 integer values."""
    out = _scaled_rounded(q, multiplier, shift, max_abs(q))
    if out is None:
        return qf.requantize(_as_int64(q), multiplier, shift, bits).to(torch.float64)
    return out.clamp_(*qrange(bits))


def requantize(q: torch.Tensor, multiplier, shift, bits: int) -> torch.Tensor:
    """functional.requantize: b-bit integers in their storage dtype."""
    return requantize_values(q, multiplier, shift, bits).to(qf.storage_dtype(bits))


def requantize_add_values(q_a: torch.Tensor, multiplier_a, shift_a, q_b: torch.Tensor,
                          multiplier_b, shift_b, bits: int) -> torch.Tensor:
    """functional.requantize_add as float64 integer values (each operand's rounded value is
    below 2**52, so their sum is exact too)."""
    a = _scaled_rounded(q_a, multiplier_a, shift_a, max_abs(q_a))
    b = None if a is None else _scaled_rounded(q_b, multiplier_b, shift_b, max_abs(q_b))
    if b is None:
        out = qf.requantize_add(_as_int64(q_a), multiplier_a, shift_a, _as_int64(q_b),
                                multiplier_b, shift_b, bits)
        return out.to(torch.float64)
    return a.add_(b).clamp_(*qrange(bits))


def requantize_add(q_a, multiplier_a, shift_a, q_b, multiplier_b, shift_b, bits: int):
    """functional.requantize_add: b-bit integers in their storage dtype."""
    out = requantize_add_values(q_a, multiplier_a, shift_a, q_b, multiplier_b, shift_b, bits)
    return out.to(qf.storage_dtype(bits))


# ---- matmuls ------------------------------------------------------------------------------------


def _exact_float_matmul(a: torch.Tensor, b: torch.Tensor, term_bound: int, extra: int):
    """a @ b of integer values as exact float values, or None: float32 GEMMs over K-chunks
    whose partial sums stay below 2**24, else one float64 GEMM (below 2**53).

    a: (..., K), b: (K, N) or (..., K, N); term_bound >= max |a_k * b_k|; extra: a bound on
    what the caller adds afterwards (the bias). The result is float32 only where the result
    plus that addition stays below 2**24 (exact in float32), else float64."""
    k = a.shape[-1]
    term_bound = max(term_bound, 1)
    if k * term_bound + extra >= FLOAT64_EXACT:
        return None
    chunk = (FLOAT32_EXACT - 1) // term_bound
    if float32_gemm_allowed() and chunk >= min(k, 64):
        a32, b32 = a.to(torch.float32), b.to(torch.float32)
        if chunk >= k:
            out = torch.matmul(a32, b32)
            return out if k * term_bound + extra < FLOAT32_EXACT else out.to(torch.float64)
        out = None
        for start in range(0, k, chunk):
            part = torch.matmul(a32[..., start:start + chunk], b32[..., start:start + chunk, :])
            out = part.to(torch.float64) if out is None else out.add_(part)
        return out
    return torch.matmul(a.to(torch.float64), b.to(torch.float64))


def integer_matmul(q_a: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
    """functional.integer_matmul: q_a (..., M, K) @ q_b (..., K, N) -> int32."""
    a_bound, b_bound = max_abs(q_a), max_abs(q_b)
    acc = None
    if a_bound is not None and b_bound is not None:
        acc = _exact_float_matmul(q_a, q_b, a_bound * b_bound, 0)
    if acc is None:
        return qf.integer_matmul(_as_int64(q_a), _as_int64(q_b))
    if acc.dtype == torch.float32:  # below 2**24: no clamp needed
        return acc.to(torch.int32)
    return acc.clamp_(INT32_MIN, INT32_MAX).to(torch.int32)


def integer_linear(q_x: torch.Tensor, weight_q: torch.Tensor, bias_q: torch.Tensor | None):
    """functional.integer_linear: q_x (..., K) @ weight_q (N, K)^T + bias_q (N,) -> int32."""
    x_bound, w_bound = max_abs(q_x), max_abs(weight_q)
    b_bound = 0 if bias_q is None else max_abs(bias_q)
    acc = None
    if None not in (x_bound, w_bound, b_bound):
        acc = _exact_float_matmul(q_x, weight_q.t(), x_bound * w_bound, b_bound)
    if acc is None:
        bias = None if bias_q is None else _as_int64(bias_q)
        return qf.integer_linear(_as_int64(q_x), _as_int64(weight_q), bias)
    if bias_q is not None:
        acc.add_(bias_q.to(acc.dtype))
    if acc.dtype == torch.float32:  # below 2**24: no clamp needed
        return acc.to(torch.int32)
    return acc.clamp_(INT32_MIN, INT32_MAX).to(torch.int32)


# ---- Shiftmax and ShiftGELU ------------------------------------------------------------------


@lru_cache(maxsize=64)
def exp_table(x0: int, n: int, span: int) -> torch.Tensor:
    """(span + 1,) int32: entry i = functional.shift_exp(i - span, x0, n), x in [-span, 0]."""
    x = torch.arange(-span, 1, dtype=torch.int64)
    return qf.shift_exp(x, x0, n).to(torch.int32)  # values in [1, 2**31 - 1]


def _table_span(low: int, high: int) -> int:
    """The span of x = q - max(q) covered: at least 255 and a power of two minus one, so that
    one table serves every batch of an 8-bit input."""
    return max(255, 2 ** math.ceil(math.log2(high - low + 1)) - 1)


def shiftmax(q: torch.Tensor, x0: int, out_bits: int, mask: torch.Tensor | None = None):
    """functional.shiftmax (same arguments): (..., N) int8/int16 probabilities.

    With e = shift_exp(.) in [1, 2**31-1] and every e <= sum(e), e * factor <= 2**31-1 where
    factor = (2**31-1) // min(sum(e), 2**31-1): the product and the shift fit int32."""
    bounds = value_range(q)
    if bounds is None or bounds[1] - bounds[0] >= EXP_TABLE_LIMIT:
        return qf.shiftmax(_as_int64(q), x0, out_bits, mask)
    span = _table_span(*bounds)
    table = exp_table(x0, SHIFTMAX_N, span).to(q.device)
    q = q.to(torch.int32)  # (..., N)
    if mask is None:
        index = q - q.amax(dim=-1, keepdim=True)  # x in [-span, 0]
        index += span
    else:  # the row max over unmasked logits; masked logits are driven to n * x0
        mask = mask.to(torch.bool)
        row_max = torch.where(mask, INT32_MIN, q).amax(dim=-1, keepdim=True)
        index = torch.where(mask, span, q - row_max + span)  # masked: any valid entry
    e = table.index_select(0, index.reshape(-1)).reshape(index.shape)  # (..., N) int32
    if mask is not None:
        masked_e = qf.shift_exp(torch.tensor([SHIFTMAX_N * x0]), x0, SHIFTMAX_N).item()
        e.masked_fill_(mask, masked_e)
    total = e.sum(dim=-1, keepdim=True, dtype=torch.int64).clamp_(max=INT32_MAX)
    factor = (INT32_MAX // total).to(torch.int32)  # (..., 1)
    y = e.mul_(factor).bitwise_right_shift_(32 - out_bits)
    return y.to(qf.storage_dtype(out_bits))


@lru_cache(maxsize=64)
def gelu_table(x0: int, low: int, width: int) -> torch.Tensor:
    """(width * width,) int32: entry (m - low) * width + (v - low) = functional.shiftgelu's
    output for value v in a row whose max is m (v <= m), both in [low, low + width).

    Row r of the grid min(values, low + r) has max low + r and holds every v <= low + r."""
    values = torch.arange(low, low + width, dtype=torch.int64)
    grid = torch.minimum(values[None, :], values[:, None])  # (width, width)
    return qf.shiftgelu(grid, x0).reshape(-1)


def shiftgelu(q: torch.Tensor, x0: int) -> torch.Tensor:
    """functional.shiftgelu: (..., C) -> int32 at S * 2**-7, from a table when q spans at
    most 256 values (ShiftGELU's input is 8-bit)."""
    bounds = value_range(q)
    if bounds is None or bounds[1] - bounds[0] >= GELU_TABLE_WIDTH:
        return qf.shiftgelu(_as_int64(q), x0)
    low = -128 if -128 <= bounds[0] and bounds[1] <= 127 else bounds[0]
    table = gelu_table(x0, low, GELU_TABLE_WIDTH).to(q.device)
    q = q.to(torch.int32)  # (..., C)
    row_offset = (q.amax(dim=-1, keepdim=True) - low) * GELU_TABLE_WIDTH - low  # (..., 1)
    index = q + row_offset  # (..., C) in [0, width**2)
    return table.index_select(0, index.reshape(-1)).reshape(index.shape)


# ---- I-LayerNorm --------------------------------------------------------------------------------


def int_layernorm(q: torch.Tensor, bias_q: torch.Tensor) -> torch.Tensor:
    """functional.int_layernorm in float64 where exact: with |q| <= B over C channels, sums
    stay below C * B, the centred y below 2B, y*y sums below C * 4B**2 and y * factor below
    2B * 2**31; all integers under 2**53. Row statistics (mean, Newton sqrt) stay int64."""
    bound, bias_bound = max_abs(q), max_abs(bias_q)
    channels = q.shape[-1]
    if (bound is None or bias_bound is None or channels * 4 * bound * bound >= FLOAT64_EXACT
            or 2 * bound * 2**31 + bias_bound >= FLOAT64_EXACT):
        return qf.int_layernorm(_as_int64(q), _as_int64(bias_q))
    x = q.to(torch.float64)  # (..., C)
    if x.data_ptr() == q.data_ptr():
        x = x.clone()
    total = x.sum(dim=-1, keepdim=True).to(torch.int64)  # (..., 1)
    mean = qf.round_div_half_even(total, channels)
    y = x.sub_(mean.to(torch.float64))  # (..., C)
    var = torch.linalg.vecdot(y, y).unsqueeze(-1).to(torch.int64)  # (..., 1)
    factor = INT32_MAX // qf.integer_sqrt_newton(var)  # (..., 1) int64
    out = y.mul_(factor.to(torch.float64) * 0.5).floor_()  # (y * factor) >> 1
    out.add_(bias_q.to(torch.float64)).clamp_(INT32_MIN, INT32_MAX)
    return out.to(torch.int32)


__all__ = [
    "dyadic_factor", "exp_table", "float32_gemm_allowed", "gelu_table", "int_layernorm",
    "integer_linear", "integer_matmul", "max_abs", "requantize", "requantize_add",
    "requantize_add_values", "requantize_values", "shiftgelu", "shiftmax", "value_range",
]
