"""IntegerGraph: emits Relax for I-ViT's quantized modules, one method per module kind.

Each method takes a Relax value (an integer tensor), its float scale (a torch tensor, metadata
only) and the PyTorch module that holds the constants, and returns (value, scale) exactly like
the module's integer-mode forward. Scales never enter the graph: they become integer
constants (multiplier, shift, x0) through the same helpers the PyTorch side uses.
"""

from __future__ import annotations

import numpy as np
import torch
from tvm import relax, te, tirx

from .. import ops
from ..ops import names
from ..ops.integer import storage_dtype
from ..quant import IntGELU, IntLayerNorm, IntSoftmax, QuantAct, QuantLinear, QuantMatMul
from ..quant import functional as qf
from ..quant.fast import exp_table, gelu_table
from ..quant.modules import requant_params


def quantize_input(x: te.Tensor, scale: float, bits: int) -> te.Tensor:
    """functional.quantize_float at the graph entry: clamp(round(x * (1/S))) in float32."""
    low, high = qf.qrange(bits)
    reciprocal32 = tirx.const(np.float32(1.0) / np.float32(scale), "float32")

    def element(*idx):
        value = tirx.round(x[idx] * reciprocal32)
        return tirx.max(tirx.min(value, float(high)), float(low)).astype(storage_dtype(bits))

    return te.compute(x.shape, element, name="quantize_input")


def gelu_requantize_table(x0: int, multiplier: int, shift: int, bits: int) -> np.ndarray:
    """(256, 256): entry [m + 128, v + 128] = requantize(shiftgelu(v in a row whose max is m))
    to `bits`, from the reference functions themselves (quant.fast.gelu_table is
    functional.shiftgelu on the grid of every (m, v <= m); entries with v > m are never read)."""
    gelu = gelu_table(x0, -128, 256).reshape(256, 256)  # (m, v) int32 at S * 2**-7
    out = qf.requantize(gelu, multiplier, shift, bits)
    return out.numpy().astype(storage_dtype(bits))


class IntegerGraph:
    """A thin layer over relax.BlockBuilder for integer I-ViT graphs."""

    def __init__(self, bb: relax.BlockBuilder, narrow_exp: bool = True,
                 byte_products: bool = False):
        self.bb = bb
        self.narrow_exp = narrow_exp  # Shiftmax/ShiftGELU in int32 where exact (from_model)
        self.byte_products = byte_products  # int16 x int8 matmuls as two 8-bit products

    # ---- constants and structure --------------------------------------------------------
    def const(self, array, dtype: str) -> relax.Constant:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        return relax.const(np.ascontiguousarray(np.asarray(array).astype(dtype)), dtype)

    def emit(self, expr) -> relax.Var:
        return self.bb.emit(expr)

    def te(self, fn, *args, name: str, **kwargs) -> relax.Var:
        return self.bb.emit_te(fn, *args, primfunc_name_hint=name, **kwargs)

    def reshape(self, x, shape):
        return self.emit(relax.op.reshape(x, shape))

    def permute(self, x, axes):
        return self.emit(relax.op.permute_dims(x, axes))

    def concat(self, values, axis: int):
        return self.emit(relax.op.concat(values, axis=axis))

    def take(self, x, indices, axis: int):
        return self.emit(relax.op.take(x, self.const(indices, "int64"), axis=axis))

    def broadcast_like(self, x, like):
        """Broadcast x to the shape of `like` (NumPy rules)."""
        return self.emit(relax.op.broadcast_to(x, like.ty.shape))

    def cast(self, x, dtype: str):
        return self.emit(relax.op.astype(x, dtype))

    def slice(self, x, axis: int, begin: int, end: int, stride: int = 1):
        return self.emit(relax.op.strided_slice(x, [axis], [begin], [end], [stride]))

    # ---- quantized modules --------------------------------------------------------------
    def _dyadic(self, scale_in, scale_out, like_channels: int | None = None):
        """(multiplier, shift) as Python ints (per tensor) or constants (per channel): the
        multipliers int32 (dyadic's |multiplier| < 2**31: exact), so the int64 product of an
        int32 value and a multiplier is one vpmuldq per 4 lanes on AVX2; the shifts int64."""
        multiplier, shift = requant_params(scale_in, scale_out)
        if multiplier.size == 1:
            return int(multiplier[0]), int(shift[0])
        return self.const(multiplier, "int32"), self.const(shift, "int64")

    def quant_act(self, act: QuantAct, x, scale_in, identity=None, identity_scale=None, name=""):
        out_scale = act.scale()
        multiplier, shift = self._dyadic(scale_in, out_scale)
        bits = act.activation_bit
        if identity is None:
            out = self.te(ops.requantize, x, multiplier=multiplier, shift=shift, bits=bits,
                          name=f"{names.REQUANTIZE}{name}")
        else:
            multiplier_id, shift_id = self._dyadic(identity_scale, out_scale)
            out = self.te(ops.requantize_add, x, multiplier, shift, identity, multiplier_id,
                          shift_id, bits, name=f"{names.REQUANTIZE_ADD}{name}")
        return out, out_scale

    def linear(self, layer: QuantLinear, x, scale_in):
        weight = self.const(layer.weight_integer.reshape(layer.weight.shape[0], -1), "int8")
        bias = None
        if layer.bias_integer is not None:
            bias = self.const(layer.bias_integer, "int32")
        out = self.te(ops.integer_dense, x, weight, bias, name=names.DENSE)
        return out, layer.output_scale(scale_in)

    def matmul(self, a, scale_a, b, scale_b, transpose_b: bool = False):
        if self.byte_products and (str(a.ty.dtype), str(b.ty.dtype)) == ("int16", "int8"):
            # 16-bit probabilities @ V: high and low bytes (ops.matmul), two 8-bit GEMMs
            high = self.te(ops.integer_batch_matmul_high, a, b, transpose_b=transpose_b,
                           name=names.BATCH_MATMUL)
            out = self.te(ops.integer_batch_matmul_low_add, a, b, high,
                          transpose_b=transpose_b, name=names.BATCH_MATMUL)
        else:
            out = self.te(ops.integer_batch_matmul, a, b, transpose_b=transpose_b,
                          name=names.BATCH_MATMUL)
        return out, QuantMatMul.output_scale(scale_a, scale_b)

    def layernorm(self, norm: IntLayerNorm, x, scale_in):
        del scale_in  # I-LayerNorm's output scale depends only on C and gamma
        bias = self.const(norm.bias_integer, "int32")
        out = self.te(ops.int_layernorm, x, bias, name=names.LAYERNORM)
        return out, norm.output_scale()

    def softmax(self, softmax: IntSoftmax, x, scale_in, mask=None):
        """Shiftmax; a mask is Swin's (nW, N, N) against logits (B*nW, heads, N, N)."""
        x0 = qf.exp_x0(scale_in)
        bits = softmax.output_bit
        # int8 logits (every I-ViT attention: qact_attn1): the exponential from a table
        table = (self.const(exp_table(x0, qf.SHIFTMAX_N, 255), "int32")
                 if str(x.ty.dtype) == "int8" else None)
        if mask is None:
            out = self.te(ops.shiftmax, x, x0=x0, out_bits=bits, narrow=self.narrow_exp,
                          exp_table=table, name=names.SHIFTMAX)
        else:
            out = self.te(ops.shiftmax, x, x0, bits, mask, window_mask=True,
                          narrow=self.narrow_exp, exp_table=table, name=names.SHIFTMAX_MASKED)
        return out, softmax.output_scale()

    def sum_tokens(self, x, axis: int):
        """Integer sum over an axis, accumulated in int32."""
        return self.emit(relax.op.sum(self.cast(x, "int32"), axis=[axis]))

    def gelu_requantize(self, gelu: IntGELU, act: QuantAct, x, scale_in):
        """ShiftGELU then act's requantize (the MLP's qact1). An int8 input (every I-ViT MLP:
        qact_gelu is 8-bit) takes one kernel reading a (256, 256) table of both, indexed by
        (row max, value) (ops.shiftgelu_lookup); anything else the two kernels."""
        multiplier, shift = requant_params(gelu.output_scale(scale_in), act.scale())
        if str(x.ty.dtype) != "int8" or multiplier.size != 1:  # per-channel: no (256, 256)
            x, scale = self.gelu(gelu, x, scale_in)
            return self.quant_act(act, x, scale)
        table = gelu_requantize_table(qf.gelu_x0(scale_in), int(multiplier[0]), int(shift[0]),
                                      act.activation_bit)
        out = self.te(ops.shiftgelu_lookup, x, self.const(table, str(table.dtype)),
                      name=names.SHIFTGELU)
        return out, act.scale()

    def gelu(self, gelu: IntGELU, x, scale_in):
        out = self.te(ops.shiftgelu, x, x0=qf.gelu_x0(scale_in), narrow=self.narrow_exp,
                      name=names.SHIFTGELU)
        return out, gelu.output_scale(scale_in)

    def quantize_input(self, act: QuantAct, images):
        out = self.te(quantize_input, images, scale=float(act.scale().item()),
                      bits=act.activation_bit, name=names.INPUT_QUANTIZE)
        return out, act.scale()
