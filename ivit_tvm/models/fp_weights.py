"""FP timm weights -> the float parameters of our quantized models (PTQ / QAT start point).

The loader is a name table: for a configuration, `parameter_names` lists every float parameter
of our model with the timm (1.0.x) state-dict key it comes from. Our integer buffers
(scales, weight_integer, ...) have no timm counterpart; a calibration forward fills them.
Where the layouts differ (Swin): timm puts patch merging at the start of stage i+1
(`layers.{i+1}.downsample`), I-ViT at the end of stage i (`layers.{i}.downsample`); timm's
classifier is `head.fc`, ours `head`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig, SwinConfig, ViTConfig
from .registry import architecture

LINEAR = ("weight", "bias")
VIT_BLOCK = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
    "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
    "mlp.fc2.weight", "mlp.fc2.bias",
)
SWIN_BLOCK = VIT_BLOCK + ("attn.relative_position_bias_table",)
SWIN_MERGE = ("norm.weight", "norm.bias", "reduction.weight")
# timm buffers that our models rebuild from the configuration (older timm saves them).
DERIVED_TIMM_BUFFERS = ("relative_position_index", "attn_mask")


def vit_names(config: ViTConfig) -> dict[str, str]:
    """DeiT/ViT: the same keys as timm."""
    names = {n: n for n in ("cls_token", "pos_embed", "patch_embed.proj.weight",
                            "patch_embed.proj.bias", "norm.weight", "norm.bias",
                            "head.weight", "head.bias")}
    for i in range(config.depth):
        names.update({f"blocks.{i}.{p}": f"blocks.{i}.{p}" for p in VIT_BLOCK})
    return names


def swin_names(config: SwinConfig) -> dict[str, str]:
    """Swin: patch merging one stage earlier than timm, classifier `head` for `head.fc`."""
    names = {n: n for n in ("patch_embed.proj.weight", "patch_embed.proj.bias",
                            "patch_embed.norm.weight", "patch_embed.norm.bias",
                            "norm.weight", "norm.bias")}
    names.update({f"head.{p}": f"head.fc.{p}" for p in LINEAR})
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            prefix = f"layers.{i}.blocks.{j}"
            names.update({f"{prefix}.{p}": f"{prefix}.{p}" for p in SWIN_BLOCK})
        if i < len(config.depths) - 1:
            names.update({f"layers.{i}.downsample.{p}": f"layers.{i + 1}.downsample.{p}"
                          for p in SWIN_MERGE})
    return names


def parameter_names(config: ModelConfig) -> dict[str, str]:
    """Our float parameter name -> timm state-dict key, for every float parameter."""
    return architecture(config.arch).timm_names(config)


def map_timm_state_dict(config: ModelConfig, timm_sd: dict) -> dict[str, torch.Tensor]:
    """Rename a timm FP state dict to our parameter names.

    Raises ValueError naming the timm keys the table expects but the dict lacks, and the keys
    the dict has but the table does not use (a different architecture or config).
    """
    names = parameter_names(config)
    missing = sorted(k for k in names.values() if k not in timm_sd)
    used = set(names.values())
    unexpected = sorted(k for k in timm_sd
                        if k not in used and k.rsplit(".", 1)[-1] not in DERIVED_TIMM_BUFFERS)
    if missing or unexpected:
        raise ValueError(
            f"timm state dict does not fit {config.arch} config {config.to_dict()}: "
            f"missing {_short(missing)}, unexpected {_short(unexpected)}; build the config with "
            "the timm model's img_size/patch/depth/dims")
    return {ours: timm_sd[theirs] for ours, theirs in names.items()}


def load_fp_weights(model: nn.Module, timm_sd: dict) -> None:
    """Copy a timm FP state dict into `model`'s float parameters, strictly.

    Every float parameter must be set, with its exact shape; the integer buffers are left for
    calibration (a fake-quant forward recomputes them).
    """
    mapped = map_timm_state_dict(model.config, timm_sd)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(mapped))
    unexpected = sorted(set(mapped) - set(params))
    shapes = sorted(f"{k} {tuple(mapped[k].shape)} != {tuple(params[k].shape)}"
                    for k in set(params) & set(mapped) if mapped[k].shape != params[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(
            f"timm weights do not fit {type(model).__name__}: missing {_short(missing)}, "
            f"unexpected {_short(unexpected)}, shape (timm != ours) {_short(shapes)}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(mapped[name])


def _short(items: list[str], limit: int = 5) -> str:
    """At most `limit` items of a list for a one-line error, with the count of the rest."""
    if not items:
        return "none"
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more
