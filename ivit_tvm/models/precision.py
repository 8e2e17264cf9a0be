"""The Shiftmax output width of a built model: as trained, or the opt-in 8-bit fast mode.

I-ViT's DeiT/ViT attention emits 16-bit probabilities (scale 2**-15), so probs @ V is an int16 x
int8 product; Swin's emits 8 bits. `set_softmax_bits(model, 8)` makes every Shiftmax emit 8 bits
(scale 2**-7: the same functional.shiftmax at out_bits 8), so probs @ V is one int8 x int8
GEMM on every target. That is another model, not a compilation of the trained one: its logits
differ from the checkpoint's and its accuracy can drop (README, "--softmax-bits"). The
artifact records the width, and ivit-eval runs its reference at the same width.
"""

from __future__ import annotations

from torch import nn

from ..quant import IntSoftmax

SOFTMAX_BITS = (8, 16)  # the widths Shiftmax's integer formula is defined and tested for


def softmax_modules(model: nn.Module) -> list[IntSoftmax]:
    return [module for module in model.modules() if isinstance(module, IntSoftmax)]


def softmax_bits(model: nn.Module) -> int:
    """The output width every Shiftmax of `model` shares; ValueError if they differ or there
    is none."""
    widths = {module.output_bit for module in softmax_modules(model)}
    if len(widths) != 1:
        raise ValueError(f"the model's Shiftmax output widths are {sorted(widths) or 'none'}: "
                         "expected one width for all attention layers")
    return widths.pop()


def set_softmax_bits(model: nn.Module, bits: int) -> int:
    """Make every Shiftmax of `model` emit `bits`-bit probabilities (8 or 16); returns the
    width it had. Later forwards (and the frontend) use the new width."""
    if bits not in SOFTMAX_BITS:
        raise ValueError(f"softmax bits {bits}: choose one of {', '.join(map(str, SOFTMAX_BITS))}")
    before = softmax_bits(model)
    for module in softmax_modules(model):
        module.output_bit = bits
    return before
