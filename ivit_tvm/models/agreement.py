"""How closely a model's exact integer path reproduces its fake-quant path."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..quant import QuantAct


@torch.no_grad()
def agreement_report(model: nn.Module, images: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Fake-quant logits vs integer logits * scale on the same images.

    Returns max_abs_logit_diff, max_rel_diff (that difference over the largest |logit| of the
    integer path) and top1_agreement (fraction of images with the same arg-max).

    In float32 (QAT's precision) the fake-quant path carries I-LayerNorm's int32 outputs (up
    to 2**31) in 24-bit mantissas, so a later requantization can land one step off. `dtype`
    float64 evaluates a float64 copy of the model instead, whose fake-quant path carries every
    integer exactly; its integer buffers are re-derived in float64 by that forward (a weight
    exactly at a rounding tie may round the other way than in float32).

    The model must be calibrated and frozen: a forward that still tracks ranges would move the
    scales the integer path then uses.
    """
    tracking = [n for n, m in model.named_modules() if isinstance(m, QuantAct) and m.running_stat]
    if tracking:
        raise ValueError(f"{len(tracking)} QuantAct(s) still calibrating (e.g. '{tracking[0]}'): "
                         "calibrate, then freeze with set_calibration(model, False)")
    if next(model.parameters()).dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    images = images.to(dtype)
    fake = model(images).double()  # (B, K)
    q_logits, scale = model.forward_integer(images)  # (B, K) int32, (K,)
    exact = q_logits.double() * scale.double()
    diff = (fake - exact).abs().max().item()
    return {
        "max_abs_logit_diff": diff,
        "max_rel_diff": diff / max(exact.abs().max().item(), torch.finfo(torch.float64).tiny),
        "top1_agreement": (fake.argmax(-1) == exact.argmax(-1)).double().mean().item(),
    }
