"""Building blocks shared by the ViT and Swin models (I-ViT's layer names and key layout)."""

from __future__ import annotations

import torch
from torch import nn

from ..quant import IntGELU, IntSoftmax, QuantAct, QuantConv2d, QuantLinear, QuantMatMul
from ..quant.modules import attention_scale


class Mlp(nn.Module):
    """fc1 -> qact_gelu (8b) -> ShiftGELU -> qact1 (8b) -> fc2 -> qact2 (16b)."""

    def __init__(self, in_features: int, hidden_features: int):
        super().__init__()
        self.fc1 = QuantLinear(in_features, hidden_features)
        self.qact_gelu = QuantAct(8)
        self.act = IntGELU()
        self.qact1 = QuantAct(8)
        self.fc2 = QuantLinear(hidden_features, in_features)
        self.qact2 = QuantAct(16)

    def forward(self, x, scale):
        x, scale = self.fc1(x, scale)  # (B, N, hidden) int32
        x, scale = self.qact_gelu(x, scale)  # int8
        x, scale = self.act(x, scale)  # int32 at S * 2**-7
        x, scale = self.qact1(x, scale)  # int8
        x, scale = self.fc2(x, scale)  # (B, N, C) int32
        return self.qact2(x, scale)  # int16


class PatchEmbed(nn.Module):
    """Patches -> tokens: QuantConv2d (kernel = stride = patch) [-> qact_before_norm -> norm]
    -> qact (16b). Swin adds the norm; ViT has none."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm_layer=None):
        super().__init__()
        self.proj = QuantConv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.has_norm = norm_layer is not None
        if self.has_norm:
            self.qact_before_norm = QuantAct(8)
            self.norm = norm_layer(embed_dim)
        self.qact = QuantAct(16)

    def forward(self, x, scale):
        x, scale = self.proj(x, scale)  # (B, D, H/p, W/p) int32
        x = x.flatten(2).transpose(1, 2)  # (B, N, D)
        if self.has_norm:
            x, scale = self.qact_before_norm(x, scale)
            x, scale = self.norm(x, scale)
        return self.qact(x, scale)  # (B, N, D) int16


class Attention(nn.Module):
    """Multi-head self-attention of ViT/DeiT, integer softmax with 16-bit output."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, softmax_bits: int = 16):
        super().__init__()
        self.num_heads = num_heads
        self.scale = attention_scale(dim // num_heads)
        self.qkv = QuantLinear(dim, dim * 3, bias=qkv_bias)
        self.qact1 = QuantAct(8)
        self.matmul_1 = QuantMatMul()
        self.qact_attn1 = QuantAct(8)
        self.int_softmax = IntSoftmax(softmax_bits)
        self.qact_softmax = QuantAct(8)  # in I-ViT's checkpoints, never used
        self.matmul_2 = QuantMatMul()
        self.qact2 = QuantAct(8)
        self.proj = QuantLinear(dim, dim)
        self.qact3 = QuantAct(16)

    def forward(self, x, scale):
        b, n, c = x.shape
        x, scale = self.qkv(x, scale)  # (B, N, 3C) int32
        x, scale_qkv = self.qact1(x, scale)  # int8
        qkv = x.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, heads, N, d) int8
        attn, scale = self.matmul_1(q, scale_qkv, k.transpose(-2, -1), scale_qkv)  # (B,h,N,N)
        attn, scale = scale_logits(attn, scale, self.scale)
        attn, scale = self.qact_attn1(attn, scale)  # int8
        attn, scale = self.int_softmax(attn, scale)  # int16 at 2**-15
        x, scale = self.matmul_2(attn, scale, v, scale_qkv)  # (B, heads, N, d) int32
        x = x.transpose(1, 2).reshape(b, n, c)
        x, scale = self.qact2(x, scale)  # int8
        x, scale = self.proj(x, scale)  # int32
        return self.qact3(x, scale)  # int16


def scale_logits(attn: torch.Tensor, scale: torch.Tensor, factor: float):
    """Fold 1/sqrt(d) into the scale: integers untouched, float values multiplied."""
    if attn.is_floating_point():
        attn = attn * factor
    return attn, scale * factor


class IntegerClassifier(nn.Module):
    """The three entry points every I-ViT classifier shares, over its `features` and `head`.

    `forward` is fake-quant (float images -> float logits); `forward_integer` and
    `forward_integer_q` run the exact integer pipeline (int32 logits and their (K,) scale).
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Fake-quant forward: float images (B, 3, H, W) -> float logits (B, classes)."""
        x, scale = self.qact_input(images)
        x, scale = self.features(x, scale)
        logits, _ = self.head(x, scale)
        return logits

    @torch.no_grad()
    def forward_integer(self, images: torch.Tensor):
        """Exact integer inference: float images -> (int32 logits (B, K), scale (K,))."""
        return self.forward_integer_q(self.qact_input.quantize(images))

    @torch.no_grad()
    def forward_integer_q(self, q_images: torch.Tensor):
        """Integer inference from int8 images quantized with qact_input's scale."""
        x, scale = self.features(q_images, self.qact_input.scale())
        return self.head(x, scale)
