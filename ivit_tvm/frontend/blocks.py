"""Relax for the layers shared by ViT and Swin (mirrors ivit_tvm/models/layers.py)."""

from __future__ import annotations

from tvm import relax

from .graph import IntegerGraph


def emit_mlp(g: IntegerGraph, mlp, x, scale):
    """fc1 -> qact_gelu -> ShiftGELU -> qact1 -> fc2 -> qact2 (models.layers.Mlp)."""
    x, scale = g.linear(mlp.fc1, x, scale)  # (B, N, hidden) int32
    x, scale = g.quant_act(mlp.qact_gelu, x, scale)  # int8
    x, scale = g.gelu_requantize(mlp.act, mlp.qact1, x, scale)  # ShiftGELU -> qact1: int8
    x, scale = g.linear(mlp.fc2, x, scale)  # (B, N, C) int32
    return g.quant_act(mlp.qact2, x, scale)  # int16


def emit_patch_embed(g: IntegerGraph, embed, q_images, scale, batch, image_hw):
    """(B, C, H, W) int8 -> (B, N, D) int16, the conv as a dense over patches."""
    proj = embed.proj
    patch = proj.kernel_size[0]
    channels = proj.in_channels
    hp, wp = image_hw[0] // patch, image_hw[1] // patch
    x = g.reshape(q_images, (batch, channels, hp, patch, wp, patch))
    x = g.permute(x, (0, 2, 4, 1, 3, 5))  # (B, Hp, Wp, C, p, p)
    x = g.reshape(x, (batch, hp * wp, channels * patch * patch))
    x, scale = g.linear(proj, x, scale)
    if embed.has_norm:
        x, scale = g.quant_act(embed.qact_before_norm, x, scale)
        x, scale = g.layernorm(embed.norm, x, scale)
    return g.quant_act(embed.qact, x, scale)


def _leading(batch) -> tuple:
    """The leading (batch) axes of an attention input: (B,) for ViT, (B, nW) for Swin's
    windows. Swin keeps the window count nW an axis of its own instead of folding it into the
    batch (B * nW), so that every kernel's shapes hold the batch as a plain variable (a kernel
    shaped B * nW takes B as an extra value, which neither the requantize fusion nor the
    attention fold can group)."""
    return tuple(batch) if isinstance(batch, tuple | list) else (batch,)


def _swap_tokens_heads(lead: int) -> tuple:
    """permute_dims axes exchanging the two axes after `lead` leading axes."""
    return (*range(lead), lead + 1, lead, lead + 2)


def emit_heads_split(g: IntegerGraph, qkv, batch, tokens: int, heads: int, head_dim: int):
    """(*lead, N, 3C) -> q, k, v each (*lead, heads, N, d), as
    qkv.reshape(...).permute(2, 0, 3, 1, 4); lead = _leading(batch)."""
    lead = _leading(batch)
    qkv = g.reshape(qkv, (*lead, tokens, 3, heads, head_dim))
    parts = []
    for i in range(3):
        part = g.slice(qkv, axis=len(lead) + 1, begin=i, end=i + 1)  # (*lead, N, 1, heads, d)
        part = g.reshape(part, (*lead, tokens, heads, head_dim))
        parts.append(g.permute(part, _swap_tokens_heads(len(lead))))  # (*lead, heads, N, d)
    return parts


def emit_attention_core(g: IntegerGraph, attn, x, scale, batch, tokens: int, channels: int,
                        logits_hook=None):
    """qkv -> qact1 -> q@k^T -> qact_attn1 [-> logits_hook] -> softmax -> @v -> qact2 -> proj.

    x: (*lead, N, C) with lead = _leading(batch). Returns the proj input (int32, same shape)
    and its scale; `logits_hook(attn, scale)` lets Swin add its position bias and mask.
    Mirrors models.layers.Attention.forward.
    """
    heads = attn.num_heads
    head_dim = channels // heads
    x, scale = g.linear(attn.qkv, x, scale)  # (B, N, 3C) int32
    x, scale_qkv = g.quant_act(attn.qact1, x, scale)  # int8
    q, k, v = emit_heads_split(g, x, batch, tokens, heads, head_dim)
    logits, scale = g.matmul(q, scale_qkv, k, scale_qkv, transpose_b=True)  # (B, h, N, N)
    scale = scale * attn.scale  # 1/sqrt(d) folded into the scale (models.layers.scale_logits)
    logits, scale = g.quant_act(attn.qact_attn1, logits, scale)  # int8
    mask = None
    if logits_hook is not None:
        logits, scale, mask = logits_hook(logits, scale)
    softmax = attn.int_softmax if hasattr(attn, "int_softmax") else attn.log_int_softmax
    probs, scale = g.softmax(softmax, logits, scale, mask)
    x, scale = g.matmul(probs, scale, v, scale_qkv)  # (*lead, heads, N, d) int32
    lead = _leading(batch)
    x = g.permute(x, _swap_tokens_heads(len(lead)))  # (*lead, N, heads, d)
    x = g.reshape(x, (*lead, tokens, channels))
    return x, scale


def broadcast_batch(g: IntegerGraph, const, batch, shape_tail):
    """Broadcast a (1, ...) constant to (B, ...)."""
    return g.emit(relax.op.broadcast_to(const, (batch, *shape_tail)))
