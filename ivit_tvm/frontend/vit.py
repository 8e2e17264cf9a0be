"""Relax for DeiT/ViT (mirrors ivit_tvm/models/vit.py)."""

from __future__ import annotations

from .blocks import broadcast_batch, emit_attention_core, emit_mlp, emit_patch_embed
from .graph import IntegerGraph


def emit_attention(g: IntegerGraph, attn, x, scale, batch, tokens: int, channels: int):
    x, scale = emit_attention_core(g, attn, x, scale, batch, tokens, channels)
    x, scale = g.quant_act(attn.qact2, x, scale)  # int8
    x, scale = g.linear(attn.proj, x, scale)  # int32
    return g.quant_act(attn.qact3, x, scale)  # int16


def emit_block(g: IntegerGraph, block, x_1, scale_1, batch, tokens: int, channels: int):
    x, scale = g.layernorm(block.norm1, x_1, scale_1)
    x, scale = g.quant_act(block.qact1, x, scale)
    x, scale = emit_attention(g, block.attn, x, scale, batch, tokens, channels)
    x_2, scale_2 = g.quant_act(block.qact2, x, scale, x_1, scale_1)
    x, scale = g.layernorm(block.norm2, x_2, scale_2)
    x, scale = g.quant_act(block.qact3, x, scale)
    x, scale = emit_mlp(g, block.mlp, x, scale)
    return g.quant_act(block.qact4, x, scale, x_2, scale_2)


def emit_vit(g: IntegerGraph, model, q_images, scale, batch):
    """int8 images (B, C, H, W) -> int32 logits (B, classes) and their (classes,) scale."""
    cfg = model.config
    dim, tokens = cfg.embed_dim, cfg.num_tokens
    x, scale = emit_patch_embed(g, model.patch_embed, q_images, scale, batch,
                                (cfg.img_size, cfg.img_size))  # (B, N, D) int16
    cls = broadcast_batch(g, g.const(model.cls_token_q(scale), "int32"), batch, (1, dim))
    x = g.concat([cls, g.cast(x, "int32")], axis=1)  # (B, N+1, D) int32
    pos_q, pos_scale = model.pos_embed_q()
    pos = broadcast_batch(g, g.const(pos_q, "int16"), batch, (tokens, dim))
    x, scale = g.quant_act(model.qact1, x, scale, pos, pos_scale)  # int16
    for block in model.blocks:
        x, scale = emit_block(g, block, x, scale, batch, tokens, dim)
    x, scale = g.layernorm(model.norm, x, scale)
    x = g.reshape(g.slice(x, axis=1, begin=0, end=1), (batch, dim))  # cls token (B, D)
    x, scale = g.quant_act(model.qact2, x, scale)  # int8
    return g.linear(model.head, x, scale)
