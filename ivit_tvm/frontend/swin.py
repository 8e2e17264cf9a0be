"""Relax for Swin (mirrors ivit_tvm/models/swin.py)."""

from __future__ import annotations

import numpy as np

from ..models.swin import token_average_scale
from .blocks import emit_attention_core, emit_mlp, emit_patch_embed
from .graph import IntegerGraph


def emit_window_attention(g: IntegerGraph, attn, windows, scale, lead: tuple, channels: int,
                          mask=None):
    """(B, nW, N, C) int8 -> (B, nW, N, C) int16 (lead = (B, nW)), with position bias and an
    optional (nW, N, N) int8 mask constant (nonzero = cut)."""
    tokens = attn.window * attn.window
    bias_q, bias_scale = attn.position_bias_q()  # (1, heads, N, N) int8

    def add_bias_and_mask(logits, logits_scale):
        bias = g.broadcast_like(g.const(bias_q, "int8"), logits)
        logits, logits_scale = g.quant_act(attn.qact2, logits, logits_scale, bias, bias_scale)
        return logits, logits_scale, mask

    x, scale = emit_attention_core(g, attn, windows, scale, lead, tokens, channels,
                                   logits_hook=add_bias_and_mask)
    x, scale = g.quant_act(attn.qact3, x, scale)  # int8
    x, scale = g.linear(attn.proj, x, scale)  # int32
    return g.quant_act(attn.qact4, x, scale)  # int16


def roll_indices(length: int, shift: int) -> np.ndarray:
    """Indices that make take(x, idx, axis) equal torch.roll(x, shift, axis)."""
    return (np.arange(length) - shift) % length


def emit_roll(g: IntegerGraph, x, shift: int, axes=(1, 2)):
    for axis in axes:
        length = int(x.ty.shape[axis])
        x = g.take(x, roll_indices(length, shift), axis=axis)
    return x


def emit_swin_block(g: IntegerGraph, block, x_1, scale_1, batch):
    h, w = block.resolution
    window = block.window
    c = block.norm1.normalized_shape[0]
    x, scale = g.layernorm(block.norm1, x_1, scale_1)
    x, scale = g.quant_act(block.qact1, x, scale)  # (B, L, C) int8
    x = g.reshape(x, (batch, h, w, c))
    if block.shift:
        x = emit_roll(g, x, -block.shift)
    x = g.reshape(x, (batch, h // window, window, w // window, window, c))
    x = g.permute(x, (0, 1, 3, 2, 4, 5))
    num_windows = (h // window) * (w // window)
    # (B, nW, N, C): the batch stays an axis of its own (blocks._leading)
    windows = g.reshape(x, (batch, num_windows, window * window, c))
    mask = None if block.attn_mask is None else g.const(block.attn_mask != 0, "int8")
    windows, scale = emit_window_attention(g, block.attn, windows, scale, (batch, num_windows),
                                           c, mask)
    x = g.reshape(windows, (batch, h // window, w // window, window, window, c))
    x = g.permute(x, (0, 1, 3, 2, 4, 5))
    x = g.reshape(x, (batch, h, w, c))
    if block.shift:
        x = emit_roll(g, x, block.shift)
    x = g.reshape(x, (batch, h * w, c))
    x_2, scale_2 = g.quant_act(block.qact2, x, scale, x_1, scale_1)
    x, scale = g.layernorm(block.norm2, x_2, scale_2)
    x, scale = g.quant_act(block.qact3, x, scale)
    x, scale = emit_mlp(g, block.mlp, x, scale)
    return g.quant_act(block.qact4, x, scale, x_2, scale_2)


def emit_patch_merging(g: IntegerGraph, merge, x, scale, batch):
    h, w = merge.resolution
    c = merge.norm.normalized_shape[0] // 4
    x = g.reshape(x, (batch, h, w, c))
    quarters = [
        g.slice(g.slice(x, 1, dh, h, 2), 2, dw, w, 2)  # (B, H/2, W/2, C)
        for dh, dw in ((0, 0), (1, 0), (0, 1), (1, 1))
    ]
    x = g.reshape(g.concat(quarters, axis=-1), (batch, (h // 2) * (w // 2), 4 * c))
    x, scale = g.layernorm(merge.norm, x, scale)
    x, scale = g.quant_act(merge.qact1, x, scale)
    x, scale = g.linear(merge.reduction, x, scale)
    return g.quant_act(merge.qact2, x, scale)


def emit_swin(g: IntegerGraph, model, q_images, scale, batch):
    """int8 images (B, C, H, W) -> int32 logits (B, classes) and their (classes,) scale."""
    cfg = model.config
    x, scale = emit_patch_embed(g, model.patch_embed, q_images, scale, batch,
                                (cfg.img_size, cfg.img_size))  # (B, L, C) int16
    x, scale = g.quant_act(model.qact1, x, scale)
    for stage in model.layers:
        for block in stage.blocks:
            x, scale = emit_swin_block(g, block, x, scale, batch)
        if stage.downsample is not None:
            x, scale = emit_patch_merging(g, stage.downsample, x, scale, batch)
    x, scale = g.layernorm(model.norm, x, scale)
    x, scale = g.quant_act(model.qact2, x, scale)  # (B, L, C) int8
    tokens = int(x.ty.shape[1])
    x = g.sum_tokens(x, axis=1)  # (B, C) int32
    x, scale = g.quant_act(model.qact3, x, token_average_scale(scale, tokens))
    return g.linear(model.head, x, scale)
