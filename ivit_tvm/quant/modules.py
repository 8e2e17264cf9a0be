"""I-ViT's quantized modules, in two modes on the same weights and buffers.

- fake-quant (float tensors in): values are exactly the integer results times their scale;
  gradients pass straight through (STE) as the float op each module approximates. QAT and
  calibration use this mode.
- integer (integer tensors in): int8/int16/int32 tensors end to end through the functions in
  `functional`, evaluated by `fast` (exact: floats only where they hold every integer). This
  is the reference compiled models match.

Without autograd recording (calibration, evaluation) the fake-quant mode builds no
straight-through surrogates: its value alone is the result.

Every forward takes and returns (tensor, scale): the scale is a float32 tensor, shape (1,) or
(C,) per channel on the last axis, metadata only. State-dict keys and buffer names are those of
I-ViT's checkpoints (act_scaling_factor, fc_scaling_factor, weight_integer, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import fast
from . import functional as qf

FLOAT32_EPS = torch.finfo(torch.float32).eps


def symmetric_scale(bits: int, min_val: torch.Tensor, max_val: torch.Tensor) -> torch.Tensor:
    """S = max(|min|, |max|) / (2**(b-1) - 1), clamped to float32 eps (float32, per element)."""
    bound = torch.maximum(-min_val, max_val).to(torch.float32)
    return (bound / float(2 ** (bits - 1) - 1)).clamp(min=FLOAT32_EPS)


def requant_params(scale_in: torch.Tensor, scale_out: torch.Tensor):
    """(multiplier, shift) of the float64 ratio S_in / S_out, as the public release takes it."""
    ratio = scale_in.detach().double().cpu().numpy() / scale_out.detach().double().cpu().numpy()
    return qf.dyadic(ratio.reshape(-1))


def ste(surrogate: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Value of `exact`, gradient of `surrogate` (straight-through estimator)."""
    return surrogate + (exact - surrogate).detach()


def to_int(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The integer behind a fake-quant float tensor: round(x / S) as int64 (no gradient)."""
    return int_values(x, scale).to(torch.int64)


def int_values(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """to_int's integers in x's float dtype (no gradient): what the fast kernels take."""
    return torch.div(x.detach(), scale.detach()).round_()


def needs_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records this forward: only then is a straight-through surrogate built
    (calibration and evaluation run without it: the value alone is the exact one)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def scaled(exact: torch.Tensor, scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """exact * S in like's dtype, for a fake-quant output without a gradient."""
    return exact.to(like.dtype).mul_(scale)


def is_integer(x: torch.Tensor) -> bool:
    return not x.is_floating_point()


class QuantAct(nn.Module):
    """Quantize or requantize an activation to b bits (per-tensor scale), optionally adding a
    requantized residual (`identity`). Calibrates its range by EMA while `running_stat`."""

    def __init__(self, activation_bit: int = 8, act_range_momentum: float = 0.95):
        super().__init__()
        self.activation_bit = activation_bit
        self.act_range_momentum = act_range_momentum
        self.running_stat = True
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None
        self.register_buffer("act_scaling_factor", torch.zeros(1))

    def extra_repr(self) -> str:
        return f"activation_bit={self.activation_bit}, running_stat={self.running_stat}"

    def freeze(self) -> None:
        """Stop range tracking: the stored scale is final."""
        self.running_stat = False

    def unfreeze(self) -> None:
        """Resume range tracking (QAT), starting from the stored scale's range."""
        self.running_stat = True
        bound = self.act_scaling_factor.detach().float() * (2 ** (self.activation_bit - 1) - 1)
        self.min_val, self.max_val = -bound.max(), bound.max()

    def _observe(self, x: torch.Tensor) -> None:
        cur_min, cur_max = torch.aminmax(x.detach())  # one pass
        if self.min_val is None or torch.equal(self.min_val, self.max_val):
            self.min_val, self.max_val = cur_min, cur_max
        else:
            m = self.act_range_momentum
            self.min_val = self.min_val * m + cur_min * (1 - m)
            self.max_val = self.max_val * m + cur_max * (1 - m)
        scale = symmetric_scale(self.activation_bit, self.min_val, self.max_val)
        self.act_scaling_factor = scale.reshape(1).to(self.act_scaling_factor.device)

    def scale(self) -> torch.Tensor:
        return self.act_scaling_factor.reshape(1).to(torch.float32)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Float -> integer at the entry of the graph (functional.quantize_float)."""
        return qf.quantize_float(x, self.scale(), self.activation_bit)

    def forward(self, x, scale_in=None, identity=None, identity_scale=None):
        if is_integer(x):
            return self._forward_integer(x, scale_in, identity, identity_scale)
        if self.running_stat:
            self._observe(x if identity is None else x + identity)
        out_scale = self.scale().to(x.device)
        if scale_in is None:
            q_out = self.quantize(x)
        else:
            q_in = int_values(x, scale_in)
            q_id = None if identity is None else int_values(identity, identity_scale)
            q_out = self._requantize(q_in, scale_in, q_id, identity_scale)  # float64
        if not needs_grad(x, identity):
            return scaled(q_out, out_scale, x), out_scale
        surrogate = x / out_scale if identity is None else (x + identity) / out_scale
        return ste(surrogate, q_out.to(x.dtype)) * out_scale, out_scale

    def _requantize(self, q_in, scale_in, q_identity, identity_scale) -> torch.Tensor:
        """The requantized (and summed) integers as float64 values (fast.requantize*)."""
        multiplier, shift = requant_params(scale_in, self.scale())
        if q_identity is None:
            return fast.requantize_values(q_in, multiplier, shift, self.activation_bit)
        multiplier_id, shift_id = requant_params(identity_scale, self.scale())
        return fast.requantize_add_values(q_in, multiplier, shift, q_identity, multiplier_id,
                                          shift_id, self.activation_bit)

    def _forward_integer(self, q, scale_in, q_identity, identity_scale):
        if scale_in is None:
            raise ValueError("integer mode: QuantAct needs the input scale (use quantize())")
        q_out = self._requantize(q, scale_in, q_identity, identity_scale)
        return q_out.to(qf.storage_dtype(self.activation_bit)), self.scale()


def weight_codes(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's per-output-channel weight scale (out,) float32 and its integer weights (as
    floats), without gradient. Cached until the weight changes: its version counter moves on
    every in-place update (optimizer steps, load_state_dict), its storage on a copy or cast.
    Tensors made under torch.inference_mode are cached apart (autograd cannot use them)."""
    w = layer.weight
    try:
        version = w._version
    except RuntimeError:  # an inference tensor has no version counter: no cache
        version = None
    key = (w.data_ptr(), version, w.dtype, w.device, tuple(w.shape), layer.weight_bit,
           torch.is_inference_mode_enabled())
    cached = layer.__dict__.get("_weight_codes")
    if version is not None and cached is not None and cached[0] == key:
        return cached[1], cached[2]
    with torch.no_grad():
        rows = w.reshape(w.shape[0], -1)
        w_min, w_max = torch.aminmax(rows, dim=1)
        w_scale = symmetric_scale(layer.weight_bit, w_min, w_max)  # (out,)
        w_scale_b = w_scale.reshape(-1, *([1] * (w.dim() - 1)))
        w_int = torch.round(w / w_scale_b).clamp_(*qf.qrange(layer.weight_bit))
    layer.__dict__["_weight_codes"] = (key, w_scale, w_int)
    return w_scale, w_int


def quantize_weights(layer: nn.Module, scale_in: torch.Tensor, scale_buffer: str):
    """Fake-quantize a layer's weight (per output channel) and bias (at S_w * S_x).

    Returns (w_q, b_q, S_b): float tensors holding integers (with STE gradients when autograd
    records), and the (out,) float32 output scale. Refreshes the layer's integer buffers, as
    I-ViT's forward does.
    """
    w = layer.weight
    w_scale, w_int = weight_codes(layer)
    grad = needs_grad(w, layer.bias)
    w_scale_b = w_scale.reshape(-1, *([1] * (w.dim() - 1)))
    w_q = ste(w / w_scale_b, w_int) if grad else w_int
    bias_scale = w_scale * scale_in.reshape(-1).to(torch.float32)  # (out,) float32
    b_q = None
    if layer.bias is not None:
        b_low, b_high = qf.qrange(layer.bias_bit)
        b_int = torch.round(layer.bias.detach() / bias_scale).clamp(b_low, b_high)
        b_q = ste(layer.bias / bias_scale, b_int) if grad else b_int
    with torch.no_grad():
        setattr(layer, scale_buffer, w_scale.clone())
        layer.weight_integer = w_int.clone()
        if b_q is not None:
            layer.bias_integer = b_q.detach().clone()
    return w_q, b_q, bias_scale


class QuantLinear(nn.Linear):
    """int8 per-output-channel weights, int32 bias at S_w * S_x: acc = q_x @ W_q^T + b_q."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_bit: int = 8, bias_bit: int = 32):
        super().__init__(in_features, out_features, bias)
        self.weight_bit = weight_bit
        self.bias_bit = bias_bit
        self.register_buffer("fc_scaling_factor", torch.zeros(out_features))
        self.register_buffer("weight_integer", torch.zeros_like(self.weight))
        if bias:
            self.register_buffer("bias_integer", torch.zeros_like(self.bias))
        else:
            self.bias_integer = None

    def output_scale(self, scale_in: torch.Tensor) -> torch.Tensor:
        """S_w * S_x per output channel (float32): the accumulator's scale in integer mode."""
        return self.fc_scaling_factor.to(torch.float32) * scale_in.reshape(-1)

    def forward(self, x, scale_in):
        if is_integer(x):
            acc = fast.integer_linear(x, self.weight_integer, self.bias_integer)
            return acc, self.output_scale(scale_in)
        w_q, b_q, bias_scale = quantize_weights(self, scale_in, "fc_scaling_factor")
        x_int = x / scale_in.reshape(-1)
        return F.linear(x_int, w_q, b_q) * bias_scale, bias_scale


class QuantConv2d(nn.Conv2d):
    """Patch embedding: a convolution with kernel = stride = patch, int8 weights per channel.

    Returns (B, D, H/p, W/p) and the (D,) output scale, like I-ViT's QuantConv2d.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride,
                 weight_bit: int = 8, bias_bit: int = 32):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=True)
        self.weight_bit = weight_bit
        self.bias_bit = bias_bit
        self.register_buffer("conv_scaling_factor", torch.zeros(out_channels))
        self.register_buffer("weight_integer", torch.zeros_like(self.weight))
        self.register_buffer("bias_integer", torch.zeros_like(self.bias))

    def output_scale(self, scale_in: torch.Tensor) -> torch.Tensor:
        """S_w * S_x per output channel (float32)."""
        return self.conv_scaling_factor.to(torch.float32) * scale_in.reshape(-1)

    def forward(self, x, scale_in):
        if is_integer(x):
            patches = image_to_patches(x, self.kernel_size)  # (B, Hp, Wp, C*p*p)
            acc = fast.integer_linear(
                patches, self.weight_integer.reshape(self.out_channels, -1), self.bias_integer,
            )  # (B, Hp, Wp, D) int32
            return acc.permute(0, 3, 1, 2), self.output_scale(scale_in)
        w_q, b_q, bias_scale = quantize_weights(self, scale_in, "conv_scaling_factor")
        out = F.conv2d(x / scale_in.reshape(-1), w_q, b_q, self.stride)
        return out * bias_scale.reshape(1, -1, 1, 1), bias_scale


def image_to_patches(q: torch.Tensor, patch) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p, W/p, C*p*p), patch pixels in the conv weight's (C, p, p) order."""
    ph, pw = patch
    b, c, h, w = q.shape
    q = q.reshape(b, c, h // ph, ph, w // pw, pw)
    return q.permute(0, 2, 4, 1, 3, 5).reshape(b, h // ph, w // pw, c * ph * pw)


class QuantMatMul(nn.Module):
    """q_A @ q_B in int32 with scale S_A * S_B (attention's two matmuls)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("act_scaling_factor", torch.zeros(1))

    @staticmethod
    def output_scale(scale_a: torch.Tensor, scale_b: torch.Tensor) -> torch.Tensor:
        return (scale_a * scale_b).reshape(-1).to(torch.float32)

    def forward(self, a, scale_a, b, scale_b):
        scale = self.output_scale(scale_a, scale_b)
        self.act_scaling_factor = scale.detach().clone()
        if is_integer(a):
            return fast.integer_matmul(a, b), scale
        return ((a / scale_a) @ (b / scale_b)) * scale, scale


class IntSoftmax(nn.Module):
    """Shiftmax over the last axis; output scale 2**-(output_bit-1)."""

    def __init__(self, output_bit: int = 8):
        super().__init__()
        self.output_bit = output_bit
        self.register_buffer("act_scaling_factor", torch.zeros(1))

    def output_scale(self) -> torch.Tensor:
        return torch.tensor([2.0 ** -(self.output_bit - 1)], dtype=torch.float32)

    def forward(self, x, scale_in, mask: torch.Tensor | None = None):
        out_scale = self.output_scale().to(x.device)
        self.act_scaling_factor = out_scale.clone()
        x0 = qf.exp_x0(scale_in)
        if is_integer(x):
            return fast.shiftmax(x, x0, self.output_bit, mask), out_scale
        y = fast.shiftmax(int_values(x, scale_in), x0, self.output_bit, mask)
        if not needs_grad(x):
            return scaled(y, out_scale, x), out_scale
        logits = x if mask is None else x.masked_fill(mask.to(torch.bool), float("-inf"))
        surrogate = F.softmax(logits, dim=-1) / out_scale
        return ste(surrogate, y.to(x.dtype)) * out_scale, out_scale


class IntGELU(nn.Module):
    """ShiftGELU: q * sigmoid(1.702 x), output scale S * 2**-7."""

    def __init__(self, output_bit: int = 8):
        super().__init__()
        self.output_bit = output_bit
        self.register_buffer("act_scaling_factor", torch.zeros(1))

    @staticmethod
    def output_scale(scale_in: torch.Tensor) -> torch.Tensor:
        """S * 2**-7 in float32: the scale of q * sigmoid."""
        sigmoid_scale = torch.tensor(2.0 ** -(qf.GELU_SIGMOID_BITS - 1))
        return scale_in.reshape(-1).to(torch.float32) * sigmoid_scale

    def forward(self, x, scale_in):
        out_scale = self.output_scale(scale_in)
        self.act_scaling_factor = out_scale.detach().clone()
        x0 = qf.gelu_x0(scale_in)
        if is_integer(x):
            return fast.shiftgelu(x, x0), out_scale
        y = fast.shiftgelu(int_values(x, scale_in), x0)
        if not needs_grad(x):
            return scaled(y, out_scale, x), out_scale
        surrogate = x * torch.sigmoid(qf.GELU_SIGMOID_ALPHA * x) / out_scale
        return ste(surrogate, y.to(x.dtype)) * out_scale, out_scale


class IntLayerNorm(nn.LayerNorm):
    """I-LayerNorm: integer mean, variance and Newton sqrt; output scale sqrt(C)/2**30 * gamma
    per channel, bias folded in as bias_integer = floor((beta / gamma) / (sqrt(C) / 2**30))."""

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__(normalized_shape, eps=eps)
        self.register_buffer("norm_scaling_factor", torch.zeros(normalized_shape))
        self.register_buffer("bias_integer", torch.zeros_like(self.bias))

    def base_scale(self) -> torch.Tensor:
        """sqrt(C) / 2**30 in float32, the scale of the normalized integer before gamma."""
        channels = self.normalized_shape[0]
        return torch.sqrt(torch.tensor(float(channels), dtype=torch.float32)) / 2**30

    def output_scale(self) -> torch.Tensor:
        return (self.base_scale() * self.weight.detach().to(torch.float32)).reshape(-1)

    def integer_bias(self) -> torch.Tensor:
        bias = self.bias.detach().float() / self.weight.detach().float()
        return torch.floor(bias / self.base_scale())

    def forward(self, x, scale_in):
        out_scale = self.output_scale().to(x.device)
        if is_integer(x):
            return fast.int_layernorm(x, self.bias_integer), out_scale
        bias_q = self.integer_bias()
        with torch.no_grad():
            self.bias_integer = bias_q.clone()
            self.norm_scaling_factor = out_scale.clone()
        y = fast.int_layernorm(int_values(x, scale_in), bias_q)
        if not needs_grad(x, self.weight, self.bias):
            return scaled(y, out_scale, x), out_scale
        surrogate = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return ste(surrogate / out_scale, y.to(x.dtype)) * out_scale, out_scale


def attention_scale(head_dim: int) -> float:
    """1/sqrt(d_head), folded into the float scale before the softmax's requantization."""
    return head_dim**-0.5


def set_calibration(model: nn.Module, enabled: bool) -> None:
    """Turn range tracking of every QuantAct on (calibration, QAT) or off (frozen scales)."""
    for module in model.modules():
        if isinstance(module, QuantAct):
            module.unfreeze() if enabled else module.freeze()


def quant_act_bits(model: nn.Module) -> dict[str, int]:
    """Bit width of every QuantAct, by state-dict prefix (recorded in checkpoint metadata)."""
    return {name: m.activation_bit for name, m in model.named_modules() if isinstance(m, QuantAct)}


__all__ = [
    "QuantAct", "QuantLinear", "QuantConv2d", "QuantMatMul", "IntSoftmax", "IntGELU",
    "IntLayerNorm", "symmetric_scale", "requant_params", "attention_scale", "set_calibration",
    "quant_act_bits", "image_to_patches", "quantize_weights", "weight_codes",
]
