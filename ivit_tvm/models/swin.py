"""Swin Transformer with I-ViT quantization (state-dict keys as I-ViT's swin_quant checkpoints).

Same two modes as vit.py on the same modules: `forward` is fake-quant (float logits),
`forward_integer` / `forward_integer_q` the exact integer pipeline. Swin's additions to the
ViT graph (formulas in `ivit_tvm.quant`):
- window attention adds a quantized relative-position bias through a requantizing add
  (`attn.qact2` with the bias as identity); in integer mode the bias is a constant;
- shifted windows mask cross-region logits with a boolean mask that IntSoftmax drives to its
  clamp `n * x0` (the public code adds a float -100 instead);
- the head averages tokens as an integer sum at scale S / N (see `token_average`).
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..quant import IntLayerNorm, IntSoftmax, QuantAct, QuantLinear, QuantMatMul
from ..quant.modules import attention_scale, ste, to_int
from .config import SwinConfig
from .layers import IntegerClassifier, Mlp, PatchEmbed, scale_logits

SHIFT_MASK_VALUE = -100.0  # the public release's additive mask; stored for key compatibility


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C), windows in row-major order (any dtype)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.reshape(-1, h // window, w // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) int64 index into the (2w-1)**2 bias table for each pair of tokens in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing="ij")).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N) in [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(resolution: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) float32: -100 where two tokens of a shifted window come from different image
    regions (they must not attend to each other), 0 elsewhere, as the public release stores it."""
    h, w = resolution
    labels = torch.zeros(1, h, w, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate(itertools.product(bands, bands)):
        labels[:, rows, cols, :] = label
    windows = window_partition(labels, window).squeeze(-1)  # (nW, N)
    different = windows[:, None, :] != windows[:, :, None]  # (nW, N, N)
    return torch.zeros(different.shape).masked_fill(different, SHIFT_MASK_VALUE)


def token_average(x: torch.Tensor, scale: torch.Tensor):
    """Mean over tokens (axis 1) as the integer sum at scale S / N, in both modes.

    Integer mode: (B, N, C) int8 -> (B, C) int32 sum. Fake-quant mode computes the same sum
    (value sum(q) * S / N, gradient of the mean), so the two modes agree. The public release
    instead requantizes the float mean (a non-integer) with qact3: the same value up to the
    rounding of the requantization ratio, but not an integer graph.
    """
    scale_mean = token_average_scale(scale, x.shape[1])
    if x.is_floating_point():
        q_sum = to_int(x, scale).sum(dim=1)  # (B, C) int64
        return ste(x.mean(dim=1) / scale_mean, q_sum.to(x.dtype)) * scale_mean, scale_mean
    return x.sum(dim=1, dtype=torch.int32), scale_mean


def token_average_scale(scale: torch.Tensor, tokens: int) -> torch.Tensor:
    """S / N (float32): the scale of the token sum that stands for the token mean."""
    return scale / tokens


class WindowAttention(nn.Module):
    """Window self-attention with relative-position bias; 8-bit Shiftmax as in I-ViT's Swin."""

    def __init__(self, dim: int, window: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = attention_scale(dim // num_heads)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = QuantLinear(dim, dim * 3, bias=qkv_bias)
        self.qact1 = QuantAct(8)
        self.qact_attn1 = QuantAct(8)
        self.qact_table = QuantAct(8)
        self.qact2 = QuantAct(8)
        self.log_int_softmax = IntSoftmax(8)
        self.qact3 = QuantAct(8)
        self.qact4 = QuantAct(16)
        self.proj = QuantLinear(dim, dim)
        self.matmul_1 = QuantMatMul()
        self.matmul_2 = QuantMatMul()
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _gather_bias(self, table: torch.Tensor) -> torch.Tensor:
        """(T, heads) table -> (1, heads, N, N) bias for every pair of tokens in a window."""
        n = self.window * self.window
        bias = table[self.relative_position_index.reshape(-1)].reshape(n, n, self.num_heads)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def position_bias(self):
        """Fake-quant bias: the table through qact_table (calibrates it), gathered."""
        table, scale = self.qact_table(self.relative_position_bias_table)
        return self._gather_bias(table), scale

    def position_bias_q(self):
        """Integer bias, a compile-time constant: ((1, heads, N, N) int8, scale)."""
        table = self.qact_table.quantize(self.relative_position_bias_table.detach())
        return self._gather_bias(table), self.qact_table.scale()

    def forward(self, x, scale, mask: torch.Tensor | None = None):
        """x: (B*nW, N, C) int8; mask: (nW, N, N) bool, True where attention is cut."""
        b_, n, c = x.shape
        x, scale = self.qkv(x, scale)  # (B*nW, N, 3C) int32
        x, scale_qkv = self.qact1(x, scale)  # int8
        qkv = x.reshape(b_, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, N, d) int8
        attn, scale = self.matmul_1(q, scale_qkv, k.transpose(-2, -1), scale_qkv)  # int32
        attn, scale = scale_logits(attn, scale, self.scale)
        attn, scale = self.qact_attn1(attn, scale)  # (B*nW, heads, N, N) int8
        if attn.is_floating_point():
            bias, bias_scale = self.position_bias()
        else:
            bias, bias_scale = self.position_bias_q()  # (1, heads, N, N) int8
        attn, scale = self.qact2(attn, scale, bias, bias_scale)  # requantizing add, int8
        if mask is None:
            attn, scale = self.log_int_softmax(attn, scale)  # int8 at 2**-7
        else:
            nw = mask.shape[0]
            attn = attn.reshape(b_ // nw, nw, self.num_heads, n, n)
            attn, scale = self.log_int_softmax(attn, scale, mask.unsqueeze(1))  # int8
            attn = attn.reshape(b_, self.num_heads, n, n)
        x, scale = self.matmul_2(attn, scale, v, scale_qkv)  # (B*nW, heads, N, d) int32
        x = x.transpose(1, 2).reshape(b_, n, c)
        x, scale = self.qact3(x, scale)  # int8
        x, scale = self.proj(x, scale)  # int32
        return self.qact4(x, scale)  # (B*nW, N, C) int16


class SwinBlock(nn.Module):
    """norm1 -> qact1 -> [roll] windows -> attn -> [unroll] -> qact2 (+x, 16b) -> norm2 ->
    qact3 -> mlp -> qact4 (+x, 16b). Where the window covers the whole resolution, the window
    shrinks to it and nothing is shifted (as the public release)."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int,
                 shift: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        if any(r % window for r in resolution):
            raise ValueError(f"Swin stage resolution {resolution} is not a multiple of the window "
                             f"size {window}; choose img_size / patch_size / window_size so it is")
        self.window, self.shift = window, shift
        self.norm1 = IntLayerNorm(dim)
        self.qact1 = QuantAct(8)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias)
        self.qact2 = QuantAct(16)
        self.norm2 = IntLayerNorm(dim)
        self.qact3 = QuantAct(8)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.qact4 = QuantAct(16)
        mask = shifted_window_mask(resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask)  # (nW, N, N) float 0/-100, as I-ViT saves it

    def forward(self, x_1, scale_1):
        h, w = self.resolution
        b, _, c = x_1.shape
        x, scale = self.norm1(x_1, scale_1)  # (B, L, C) int32, per-channel scale
        x, scale = self.qact1(x, scale)  # int8
        x = x.reshape(b, h, w, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = window_partition(x, self.window)  # (B*nW, N, C) int8
        mask = None if self.attn_mask is None else self.attn_mask != 0  # (nW, N, N) bool
        windows, scale = self.attn(windows, scale, mask)  # int16
        x = window_reverse(windows, self.window, h, w)  # (B, H, W, C)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x.reshape(b, h * w, c)
        x_2, scale_2 = self.qact2(x, scale, x_1, scale_1)  # residual, int16
        x, scale = self.norm2(x_2, scale_2)
        x, scale = self.qact3(x, scale)  # int8
        x, scale = self.mlp(x, scale)  # int16
        return self.qact4(x, scale, x_2, scale_2)  # residual, int16


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (4C) -> I-LayerNorm -> qact1 (8b) -> reduction (no bias)
    -> qact2 (8b, as the public release: the next stage's residual stream enters at 8 bits)."""

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        if any(r % 2 for r in resolution):
            raise ValueError(f"Swin patch merging needs an even resolution, got {resolution}")
        self.resolution = resolution
        self.norm = IntLayerNorm(4 * dim)
        self.qact1 = QuantAct(8)
        self.reduction = QuantLinear(4 * dim, 2 * dim, bias=False)
        self.qact2 = QuantAct(8)

    def forward(self, x, scale):
        h, w = self.resolution
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      dim=-1)  # (B, H/2, W/2, 4C)
        x = x.reshape(b, -1, 4 * c)
        x, scale = self.norm(x, scale)  # int32, per-channel scale
        x, scale = self.qact1(x, scale)  # int8
        x, scale = self.reduction(x, scale)  # (B, L/4, 2C) int32
        return self.qact2(x, scale)  # int8


class SwinStage(nn.Module):
    """`depth` blocks alternating plain and shifted windows, then patch merging (if any)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int,
                 window: int, mlp_ratio: float, qkv_bias: bool, downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window, 0 if i % 2 == 0 else window // 2,
                      mlp_ratio, qkv_bias)
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x, scale):
        for block in self.blocks:
            x, scale = block(x, scale)
        if self.downsample is not None:
            x, scale = self.downsample(x, scale)
        return x, scale


class SwinTransformer(IntegerClassifier):
    """I-ViT's quantized Swin. `forward` is fake-quant (float in, float logits out);
    `forward_integer` runs the exact integer pipeline (int32 logits and their scale)."""

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        grid = config.img_size // config.patch_size
        self.qact_input = QuantAct(8)
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, config.embed_dim,
                                      norm_layer=IntLayerNorm)
        self.qact1 = QuantAct(16)
        last = len(config.depths) - 1
        self.layers = nn.ModuleList(
            SwinStage(config.embed_dim * 2**i, (grid // 2**i, grid // 2**i), depth,
                      config.num_heads[i], config.window_size, config.mlp_ratio,
                      config.qkv_bias, downsample=i < last)
            for i, depth in enumerate(config.depths)
        )
        self.norm = IntLayerNorm(config.num_features)
        self.qact2 = QuantAct(8)
        self.qact3 = QuantAct(8)
        self.head = QuantLinear(config.num_features, config.num_classes)
        self.act_out = QuantAct(8)  # in I-ViT's checkpoints, never used

    def features(self, x, scale):
        """Patch embedding, stages, final norm and token average: (B, C) int8."""
        x, scale = self.patch_embed(x, scale)  # (B, L, C) int16
        x, scale = self.qact1(x, scale)  # int16
        for layer in self.layers:
            x, scale = layer(x, scale)
        x, scale = self.norm(x, scale)  # int32, per-channel scale
        x, scale = self.qact2(x, scale)  # (B, L, C) int8
        x, scale = token_average(x, scale)  # (B, C) int32 at S / L
        return self.qact3(x, scale)  # int8
