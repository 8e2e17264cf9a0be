"""A model configuration for a checkpoint: from its metadata, else from its key names and
shapes (one rule per architecture, named in ivit_tvm.models.registry), then user overrides."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import torch

from ..models import (
    ARCHITECTURES,
    ModelConfig,
    SwinConfig,
    ViTConfig,
    config_from_dict,
    model_config,
)
from .errors import name_keys


def infer_config(state: Mapping[str, torch.Tensor], name: str | None = None) -> ModelConfig:
    """A model configuration from a state_dict's key names and shapes.

    ViT/DeiT head count is not in any shape: it comes from `name`, else from head_dim = 64
    (DeiT-T: 192 -> 3 heads). Swin's comes from the relative-position tables (dim / 32 without).
    """
    named = model_config(name) if name else None
    arch = next((a for a in ARCHITECTURES.values() if _indices(state, a.block_prefix)), None)
    if arch is None:
        marks = " or ".join(f"'{a.block_prefix}N.' ({a.name})" for a in ARCHITECTURES.values())
        raise ValueError(f"cannot tell the architecture: no {marks} keys among "
                         f"{name_keys(list(state))}")
    if named is not None and named.arch != arch.name:
        raise ValueError(f"the file holds a {arch.name} model but '{name}' is a {named.arch} "
                         "model; pass the model it was made for, or none")
    return arch.infer_config(state, named)


def resolve_config(state: Mapping[str, torch.Tensor], meta: dict, name: str | None,
                   overrides: dict) -> tuple[ModelConfig, str]:
    """(configuration, where it came from): metadata first, else inferred; then `overrides`."""
    if "config" in meta:
        try:
            config = config_from_dict(meta["config"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"unreadable model config in its metadata ({err})") from None
        named = model_config(name) if name else None
        if named is not None and named.arch != config.arch:
            raise ValueError(f"its metadata says {config.arch} but '{name}' is a {named.arch} "
                             "model; pass the model it was made for, or none")
        source = "metadata"
    else:
        config = infer_config(state, name)
        source = f"inferred from shapes, heads from '{name}'" if name else "inferred from shapes"
    if overrides:
        valid = {f.name for f in dataclasses.fields(config)} - {"arch"}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown {config.arch} config field(s) {unknown}; valid: "
                             f"{sorted(valid)}")
        config = dataclasses.replace(config, **overrides)
        source += f", overridden: {', '.join(sorted(overrides))}"
    return config, source


def infer_vit(state: Mapping[str, torch.Tensor], named: ViTConfig | None) -> ViTConfig:
    """DeiT/ViT: grid from pos_embed's tokens, heads from `named` else head_dim 64."""
    dim, in_chans, patch = _patch_embed(state)
    tokens = _tensor(state, "pos_embed").shape[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"pos_embed has {tokens} tokens, not 1 + a square grid of patches")
    hidden = _tensor(state, "blocks.0.mlp.fc1.weight").shape[0]
    if named is not None:
        heads = named.num_heads
    else:
        heads = 3 if dim == 192 else dim // 64
        if heads == 0 or dim % heads:
            raise ValueError(f"cannot infer the number of heads for embed_dim {dim}: pass the "
                             "model name or num_heads")
    if dim % heads:
        raise ValueError(f"{heads} heads do not divide the file's embed_dim {dim}")
    return ViTConfig(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans,
        num_classes=_tensor(state, "head.weight").shape[0], embed_dim=dim,
        depth=len(_indices(state, "blocks.")), num_heads=heads,
        mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def infer_swin(state: Mapping[str, torch.Tensor], named: SwinConfig | None) -> SwinConfig:
    """Stage s works at resolution img / (patch * 2**s). Its window is the table's (2w-1)**2
    rows; a shifted block's attn_mask holds one mask per window, (res / w)**2 of them; a stage
    whose window is smaller than the others' is as small as its resolution (I-ViT's rule)."""
    dim, in_chans, patch = _patch_embed(state)
    stages = len(_indices(state, "layers."))
    depths = tuple(len(_indices(state, f"layers.{s}.blocks.")) for s in range(stages))
    windows, heads = [], []
    for s in range(stages):
        table = state.get(f"layers.{s}.blocks.0.attn.relative_position_bias_table")
        if table is None:
            windows.append(None)
            heads.append(dim * 2**s // 32)
        else:
            windows.append((math.isqrt(table.shape[0]) + 1) // 2)
            heads.append(table.shape[1])
    known = [w for w in windows if w is not None]
    window = max(known) if known else (named.window_size if named else SwinConfig.window_size)
    img_size = named.img_size if named else window * 2 ** (stages - 1) * patch
    for s, stage_window in enumerate(windows):
        resolution = _swin_resolution(state, s, depths[s], stage_window or window, window)
        if resolution is not None:
            img_size = resolution * 2**s * patch
            break
    hidden = _tensor(state, "layers.0.blocks.0.mlp.fc1.weight").shape[0]
    return SwinConfig(
        img_size=img_size, patch_size=patch, in_chans=in_chans,
        num_classes=_tensor(state, "head.weight").shape[0], embed_dim=dim, depths=depths,
        num_heads=tuple(heads), window_size=window, mlp_ratio=hidden / dim,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state,
    )


def _swin_resolution(state, stage: int, depth: int, window: int, largest: int) -> int | None:
    """A stage's token-grid side, when its keys tell it."""
    for b in range(depth):
        mask = state.get(f"layers.{stage}.blocks.{b}.attn_mask")
        if mask is not None:
            return window * math.isqrt(mask.shape[0])
    return window if window < largest else None


def _patch_embed(state) -> tuple[int, int, int]:
    weight = _tensor(state, "patch_embed.proj.weight")  # (D, C, p, p)
    return weight.shape[0], weight.shape[1], weight.shape[2]


def _tensor(state, key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f"key '{key}' is missing, so the model configuration cannot be "
                         "inferred; pass the model name")
    return state[key]


def _indices(state, prefix: str) -> set[int]:
    """The N in keys starting `prefix`N. (block or stage numbers), checked to be 0..n-1."""
    regex = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state if (m := regex.match(key))}
    if found and found != set(range(len(found))):
        missing = min(set(range(max(found) + 1)) - found)
        raise ValueError(f"keys '{prefix}N.' skip N = {missing}: the state_dict is incomplete")
    return found
