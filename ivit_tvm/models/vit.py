"""DeiT / ViT with I-ViT quantization (state-dict keys as I-ViT's vit_quant checkpoints)."""

from __future__ import annotations

import torch
from torch import nn

from ..quant import IntLayerNorm, QuantAct, QuantLinear
from .config import ViTConfig
from .layers import Attention, IntegerClassifier, Mlp, PatchEmbed


class Block(nn.Module):
    """norm1 -> qact1 -> attn -> qact2 (+x, 16b) -> norm2 -> qact3 -> mlp -> qact4 (+x, 16b)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = IntLayerNorm(dim)
        self.qact1 = QuantAct(8)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.qact2 = QuantAct(16)
        self.norm2 = IntLayerNorm(dim)
        self.qact3 = QuantAct(8)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.qact4 = QuantAct(16)

    def forward(self, x_1, scale_1):
        x, scale = self.norm1(x_1, scale_1)  # (B, N, C) int32, per-channel scale
        x, scale = self.qact1(x, scale)  # int8
        x, scale = self.attn(x, scale)  # int16
        x_2, scale_2 = self.qact2(x, scale, x_1, scale_1)  # residual, int16
        x, scale = self.norm2(x_2, scale_2)
        x, scale = self.qact3(x, scale)  # int8
        x, scale = self.mlp(x, scale)  # int16
        return self.qact4(x, scale, x_2, scale_2)  # residual, int16


class VisionTransformer(IntegerClassifier):
    """I-ViT's quantized DeiT/ViT. `forward` is fake-quant (float in, float logits out);
    `forward_integer` runs the exact integer pipeline (int32 logits and their scale)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.qact_input = QuantAct(8)
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.num_tokens, dim))
        self.qact_pos = QuantAct(16)
        self.qact1 = QuantAct(16)
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_ratio, config.qkv_bias)
            for _ in range(config.depth)
        )
        self.norm = IntLayerNorm(dim)
        self.qact2 = QuantAct(8)
        self.head = QuantLinear(dim, config.num_classes)
        # I-ViT's checkpoints carry these two (never used); kept so keys match exactly.
        self.act_out = QuantAct(8)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def _tokens(self, x, scale):
        """Patch embedding, cls token and position embedding: (B, N+1, C) at 16 bits."""
        x, scale = self.patch_embed(x, scale)  # (B, N, C)
        b = x.shape[0]
        if x.is_floating_point():
            cls = self.cls_token.expand(b, -1, -1)
            pos, pos_scale = self.qact_pos(self.pos_embed)
        else:
            cls = self.cls_token_q(scale).expand(b, -1, -1)
            pos, pos_scale = self.pos_embed_q()
            x = x.to(torch.int32)
        x = torch.cat((cls, x), dim=1)  # (B, N+1, C)
        return self.qact1(x, scale, pos, pos_scale)

    def cls_token_q(self, scale: torch.Tensor) -> torch.Tensor:
        """round(cls / S_patch): a compile-time constant (1, 1, C) int32."""
        return torch.round(self.cls_token.detach() / scale).to(torch.int32)

    def pos_embed_q(self):
        """The position embedding quantized by qact_pos: ((1, N+1, C) int16, scale)."""
        return self.qact_pos.quantize(self.pos_embed.detach()), self.qact_pos.scale()

    def features(self, x, scale):
        x, scale = self._tokens(x, scale)
        for block in self.blocks:
            x, scale = block(x, scale)
        x, scale = self.norm(x, scale)
        return self.qact2(x[:, 0], scale)  # cls token, (B, C) int8
