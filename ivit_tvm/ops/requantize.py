"""Requantization (dyadic rescale + round-half-even + saturate) as TE compute definitions.

Formulas: `ivit_tvm.quant.functional` (requantize, requantize_add, rshift_round). The
(multiplier, shift) pairs come from functional.dyadic.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

from tvm import te, tirx

from .integer import as_int64, clamp_bits, rshift_round, storage_dtype
from .shapes import require_extent, require_int

ChannelParam = int | te.Tensor
"""A per-tensor Python int (baked into the kernel) or a (C,) integer tensor (per channel)."""


def channel_param(
    param: ChannelParam, channels, op: str, name: str
) -> Callable[[tirx.PrimExpr], tirx.PrimExpr | int]:
    """Read a per-tensor or per-channel parameter at channel index c (the last axis)."""
    if isinstance(param, Integral):
        return lambda c: int(param)
    if not isinstance(param, te.Tensor):
        raise TypeError(f"{op}: {name} must be a Python int or a (C,) te.Tensor, got {param!r}")
    require_int(param, op, name)
    if len(param.shape) != 1:
        raise ValueError(f"{op}: {name} must be 1-D (C,), got shape {tuple(param.shape)}")
    require_extent(param.shape[0], channels, op, f"{name}'s length (channels on q's last axis)")
    return lambda c: param[c]


def _rescale(q: te.Tensor, multiplier, shift, op: str, operand: str):
    """The int64 round_half_even(q * multiplier / 2**shift) at an index of q."""
    require_int(q, op, operand)
    channels = q.shape[-1]
    multiplier_at = channel_param(multiplier, channels, op, f"multiplier of {operand}")
    shift_at = channel_param(shift, channels, op, f"shift of {operand}")

    def at(index) -> tirx.PrimExpr:
        c = index[-1]
        product = as_int64(q[index]) * as_int64(multiplier_at(c))  # int64, |.| < 2**62
        return rshift_round(product, shift_at(c))

    return at


def requantize(
    q: te.Tensor, multiplier: ChannelParam, shift: ChannelParam, bits: int
) -> te.Tensor:
    """functional.requantize: q (..., C) any int dtype -> (..., C) int8/int16/int32 by `bits`.

    multiplier and shift: Python ints (per tensor) or (C,) tensors (per channel, last axis).
    A runtime shift outside functional.dyadic's [1, 62] is clamped into it (no shift UB).
    """
    storage_dtype(bits)  # validates bits
    rescaled = _rescale(q, multiplier, shift, "requantize", "q")
    return te.compute(
        q.shape, lambda *index: clamp_bits(rescaled(index), bits), name="requantize"
    )  # (..., C) int8/int16/int32


def requantize_add(
    q_a: te.Tensor,
    multiplier_a: ChannelParam,
    shift_a: ChannelParam,
    q_b: te.Tensor,
    multiplier_b: ChannelParam,
    shift_b: ChannelParam,
    bits: int,
) -> te.Tensor:
    """functional.requantize_add: the residual add of two equally shaped (..., C) tensors."""
    storage_dtype(bits)
    if len(q_a.shape) != len(q_b.shape):
        raise ValueError(
            f"requantize_add: q_a has shape {tuple(q_a.shape)}, q_b {tuple(q_b.shape)}; "
            "the residual operands must have the same shape"
        )
    for axis, (extent_a, extent_b) in enumerate(zip(q_a.shape, q_b.shape, strict=True)):
        require_extent(extent_b, extent_a, "requantize_add", f"q_b's axis {axis}")
    rescaled_a = _rescale(q_a, multiplier_a, shift_a, "requantize_add", "q_a")
    rescaled_b = _rescale(q_b, multiplier_b, shift_b, "requantize_add", "q_b")
    return te.compute(
        q_a.shape,
        lambda *index: clamp_bits(rescaled_a(index) + rescaled_b(index), bits),
        name="requantize_add",
    )  # (..., C) int8/int16/int32
