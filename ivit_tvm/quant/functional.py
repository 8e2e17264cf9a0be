"""I-ViT's integer functions, written once: the reference every compiled kernel must match.

Every function takes and returns integer torch tensors and computes in int64, so the results
are exact (no float op touches the data). Scales are float metadata: they enter only through
compile-time constants (multiplier, shift, x0) derived by the helpers at the bottom.

Formulas (S: float scale, q: the integer behind x = q * S):

- requantize:  out = clamp(round_half_even(q * multiplier / 2**shift), -2**(b-1), 2**(b-1)-1)
  with (multiplier, shift) = dyadic(S_in / S_out).
- requantize_add: each operand requantized with its own (multiplier, shift), summed, clamped.
- shift_exp (the exponential of Shiftmax/ShiftGELU, n fractional bits):
      x  = x + floor(x/2) - floor(x/16)            # x * log2(e)
      x  = max(x, n * x0)                          # x0 = floor(-1 / S), a negative constant
      qt = floor(x / x0);  r = x - x0 * qt          # r in (x0, 0]
      e  = floor((r/2 - x0) * 2**(n - qt)) = (r - 2*x0) << (n - qt - 1)   (>> 1 when qt = n)
      e  = min(e, 2**31 - 1)                       # saturates; see shift_exp's docstring
- shiftmax:    e = shift_exp(q - max(q)); f = (2**31-1) // min(sum(e), 2**31-1);
               y = (e * f) >> (32 - b)             # b output bits, S_out = 2**-(b-1)
- shiftgelu:   xm = max(q); e1 = shift_exp(q - xm); e2 = shift_exp(-xm)   (x0 from 1.702 * S)
               f = (2**31-1) // min(e1 + e2, 2**31-1); sigmoid = (e1 * f) >> 24;
               y = q * sigmoid                     # S_out = S * 2**-7
- int_layernorm: mu = round_half_even(sum(q) / C); y = q - mu; var = sum(y*y);
               k = 2**16, 10 times k = (k + var // k) // 2;  f = (2**31-1) // k;
               out = clamp((y * f) >> 1 + bias_q, int32)   # S_out = sqrt(C) / 2**30 * gamma

Where the public I-ViT release evaluates these in float32/float64, its results can drop low
bits; this module is the integer function the release describes, computed exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from .constants import (  # noqa: F401  (re-exported: the numbers belong to these formulas)
    GELU_SIGMOID_ALPHA,
    GELU_SIGMOID_BITS,
    INT32_MAX,
    INT32_MIN,
    LAYERNORM_NEWTON_START,
    LAYERNORM_NEWTON_STEPS,
    MAX_SHIFT,
    SHIFTGELU_N,
    SHIFTMAX_N,
    qrange,
)


def storage_dtype(bits: int) -> torch.dtype:
    """The narrowest torch integer dtype that holds a b-bit signed value."""
    if bits <= 8:
        return torch.int8
    if bits <= 16:
        return torch.int16
    if bits <= 32:
        return torch.int32
    return torch.int64


def _i64(q: torch.Tensor) -> torch.Tensor:
    if q.is_floating_point():
        raise TypeError(f"integer function got a {q.dtype} tensor; pass integer tensors")
    return q.to(torch.int64)


def _as_i64(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.int64, device=like.device)


def rshift_round(x: torch.Tensor, shift) -> torch.Tensor:
    """round_half_even(x / 2**shift) for int64 x and shift >= 1 (scalar or broadcastable)."""
    x = _i64(x)
    shift = _as_i64(shift, x)
    half_minus_one = torch.bitwise_left_shift(torch.ones_like(shift), shift - 1) - 1
    odd = torch.bitwise_right_shift(x, shift) & 1
    return torch.bitwise_right_shift(x + half_minus_one + odd, shift)


def clamp_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Saturate to the signed b-bit range and store in the narrowest dtype."""
    low, high = qrange(bits)
    return q.clamp(low, high).to(storage_dtype(bits))


def quantize_float(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Float -> b-bit integer: clamp(round(x * (1/S))), the reciprocal taken in float32.

    As I-ViT's release (`linear_quantize`: round(1. / scale * x)): multiplying by the float32
    reciprocal differs from dividing by S on a few inputs (8 of 37824 DeiT-S pos_embed codes),
    so the project multiplies too. torch.round rounds half to even.
    """
    reciprocal = 1.0 / scale.to(torch.float32)  # float32, correctly rounded
    return clamp_bits(torch.round(x * reciprocal).to(torch.int64), bits)


def requantize(q: torch.Tensor, multiplier, shift, bits: int) -> torch.Tensor:
    """clamp(round_half_even(q * multiplier / 2**shift)) to b bits.

    q: (..., C) integer; multiplier, shift: scalars or (C,) per channel (last axis).
    """
    product = _i64(q) * _as_i64(multiplier, q)  # (..., C) int64, |.| < 2**62
    return clamp_bits(rshift_round(product, shift), bits)


def requantize_add(
    q_a: torch.Tensor, multiplier_a, shift_a, q_b: torch.Tensor, multiplier_b, shift_b, bits: int
) -> torch.Tensor:
    """Residual add: both operands requantized to the output scale, summed, clamped to b bits."""
    a = rshift_round(_i64(q_a) * _as_i64(multiplier_a, q_a), shift_a)
    b = rshift_round(_i64(q_b) * _as_i64(multiplier_b, q_b), shift_b)
    return clamp_bits(a + b, bits)


def shift_exp(x: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    """Integer 2**n * exp(x * S) for x <= 0 (module docstring), int64 in [1, 2**31-1].

    The result saturates at 2**31-1: the public float code lets it grow past that (a ShiftGELU
    input scale under 2**-8 / 1.702, or a positive x), which overflows the sums it feeds.
    """
    if x0 >= 0:
        raise ValueError(f"shift_exp needs x0 = floor(-1/S) < 0, got {x0}")
    x = _i64(x)
    x = x + torch.bitwise_right_shift(x, 1) - torch.bitwise_right_shift(x, 4)
    x = torch.clamp(x, min=n * x0)
    qt = torch.div(x, x0, rounding_mode="floor")
    r = x - x0 * qt  # in (x0, 0]
    v = r - 2 * x0  # in (-x0, -2*x0], > 0
    shift = n - qt - 1  # >= -1 since qt <= n
    left = torch.bitwise_left_shift(v, shift.clamp(0, 31))
    e = torch.where(shift >= 0, left, torch.bitwise_right_shift(v, 1))
    return e.clamp(max=INT32_MAX)


def shiftmax(q: torch.Tensor, x0: int, out_bits: int, mask: torch.Tensor | None = None):
    """Shiftmax over the last axis: integer softmax with output scale 2**-(out_bits-1).

    q: (..., N) integer logits at scale S, x0 = exp_x0(S); mask: bool, broadcastable to q,
    True where a logit is masked out (driven to the clamp n * x0, as Swin's shifted windows).
    Returns (..., N) int8 (out_bits 8) or int16 (out_bits 16).
    """
    q = _i64(q)
    if mask is None:
        x = q - q.max(dim=-1, keepdim=True).values  # (..., N) <= 0
    else:  # the row max is over unmasked logits, as the public -100 float mask makes it
        mask = mask.to(torch.bool)
        row_max = torch.where(mask, torch.iinfo(torch.int64).min, q).max(dim=-1, keepdim=True)
        x = torch.where(mask, torch.full_like(q, SHIFTMAX_N * x0), q - row_max.values)
    e = shift_exp(x, x0, SHIFTMAX_N)  # (..., N) int64
    total = e.sum(dim=-1, keepdim=True).clamp(max=INT32_MAX)
    factor = torch.div(INT32_MAX, total, rounding_mode="floor")  # (..., 1)
    y = torch.bitwise_right_shift(e * factor, 32 - out_bits)
    return y.to(storage_dtype(out_bits))


def shiftgelu(q: torch.Tensor, x0: int) -> torch.Tensor:
    """ShiftGELU over the last axis: q * sigmoid(1.702 x) as int32 at scale S * 2**-7.

    q: (..., C) integer at scale S; x0 = exp_x0(1.702 * S) (see gelu_x0).
    """
    q = _i64(q)
    q_max = q.max(dim=-1, keepdim=True).values
    e1 = shift_exp(q - q_max, x0, SHIFTGELU_N)  # (..., C)
    e2 = shift_exp(-q_max, x0, SHIFTGELU_N)  # (..., 1)
    factor = torch.div(INT32_MAX, (e1 + e2).clamp(max=INT32_MAX), rounding_mode="floor")
    sigmoid = torch.bitwise_right_shift(e1 * factor, 32 - GELU_SIGMOID_BITS)  # <= 127
    return (q * sigmoid).to(torch.int32)


def round_div_half_even(numerator: torch.Tensor, divisor: int) -> torch.Tensor:
    """round_half_even(numerator / divisor) for int64 numerator, positive int divisor."""
    quotient = torch.div(numerator, divisor, rounding_mode="floor")
    twice_rem = 2 * (numerator - quotient * divisor)
    up = (twice_rem > divisor) | ((twice_rem == divisor) & (quotient & 1).bool())
    return quotient + up.to(torch.int64)


def integer_sqrt_newton(var: torch.Tensor) -> torch.Tensor:
    """I-LayerNorm's 10-step integer Newton iteration for sqrt(var), starting at 2**16."""
    k = torch.full_like(var, LAYERNORM_NEWTON_START)
    for _ in range(LAYERNORM_NEWTON_STEPS):
        k = torch.div(k + torch.div(var, k, rounding_mode="floor"), 2, rounding_mode="floor")
    return k


def int_layernorm(q: torch.Tensor, bias_q: torch.Tensor) -> torch.Tensor:
    """I-LayerNorm over the last axis (C channels): int32 at scale sqrt(C)/2**30 * gamma.

    q: (..., C) integer; bias_q: (C,) integer, floor((beta / gamma) / (sqrt(C) / 2**30)).
    """
    q = _i64(q)
    channels = q.shape[-1]
    mean = round_div_half_even(q.sum(dim=-1, keepdim=True), channels)  # (..., 1)
    y = q - mean  # (..., C)
    var = (y * y).sum(dim=-1, keepdim=True)  # (..., 1), a sum, not a mean
    std = integer_sqrt_newton(var)  # (..., 1) >= 64
    factor = torch.div(INT32_MAX, std, rounding_mode="floor")
    out = torch.bitwise_right_shift(y * factor, 1) + _i64(bias_q)
    return out.clamp(INT32_MIN, INT32_MAX).to(torch.int32)


def integer_matmul(q_a: torch.Tensor, q_b: torch.Tensor) -> torch.Tensor:
    """q_a @ q_b accumulated exactly (int64), returned as int32 (the accumulator's dtype)."""
    acc = torch.matmul(_i64(q_a), _i64(q_b))
    return acc.clamp(INT32_MIN, INT32_MAX).to(torch.int32)


def integer_linear(q_x: torch.Tensor, weight_q: torch.Tensor, bias_q: torch.Tensor | None):
    """acc = q_x @ W^T + b as int32: q_x (..., K) int8, weight_q (N, K) int8, bias_q (N,) int32."""
    acc = torch.matmul(_i64(q_x), _i64(weight_q).t())
    if bias_q is not None:
        acc = acc + _i64(bias_q)
    return acc.clamp(INT32_MIN, INT32_MAX).to(torch.int32)


# ---- compile-time constants (host side, float64 -> integers) ------------------------------


def dyadic(ratio) -> tuple[np.ndarray, np.ndarray]:
    """(multiplier, shift) int64 arrays with ratio ~= multiplier / 2**shift.

    frexp(ratio) = (mant, exp); multiplier = round_half_up(mant * 2**31) (|.| < 2**31),
    shift = 31 - exp in [1, 62]. Raises ValueError for a ratio >= 2**30 (not a requantization).
    """
    ratio = np.atleast_1d(np.asarray(ratio, dtype=np.float64))
    if not np.all(np.isfinite(ratio)):
        raise ValueError(f"requantization ratio is not finite: {ratio}")
    mant, exp = np.frexp(ratio)
    multiplier = np.sign(mant) * np.floor(np.abs(mant) * 2.0**31 + 0.5)
    shift = 31 - exp.astype(np.int64)
    full = np.abs(multiplier) == 2.0**31  # mantissa rounded up to 1.0
    multiplier[full] /= 2
    shift[full] -= 1
    if np.any(shift < 1):
        raise ValueError(
            f"requantization ratio {ratio.max():g} >= 2**30: the output scale is far smaller "
            "than the input scale; recalibrate this activation"
        )
    too_far = shift > MAX_SHIFT
    if np.any(too_far):  # tiny ratios: drop low multiplier bits so the shift fits int64 math
        drop = shift[too_far] - MAX_SHIFT
        multiplier[too_far] = np.floor(multiplier[too_far] / 2.0**drop + 0.5)
        shift[too_far] = MAX_SHIFT
    return multiplier.astype(np.int64), shift


def exp_x0(scale: torch.Tensor | float) -> int:
    """x0 = floor(-1 / S) in float32, as the public release computes it; S must be > 2**-30."""
    scale32 = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    if scale32.numel() != 1:
        raise ValueError(f"Shiftmax/ShiftGELU need a per-tensor input scale, got {scale32.numel()}")
    if not (scale32.item() > 2.0**-30):
        raise ValueError(f"input scale {scale32.item():g} is not > 2**-30: uncalibrated?")
    return int(torch.floor(-1.0 / scale32).item())


def gelu_x0(scale: torch.Tensor | float) -> int:
    """x0 of ShiftGELU: exp_x0(1.702 * S), with the product taken in float32."""
    scale32 = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
    return exp_x0(scale32 * GELU_SIGMOID_ALPHA)
