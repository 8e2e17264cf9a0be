"""A model configuration for a checkpoint: from its metadata, else from its key names and
shapes (one rule per architecture, named in ivit_tvm.models.registry), then the caller's fields.

What shapes cannot tell (ViT's head count) comes from the metadata, a model name or the caller;
else from a convention where one fits, recorded in `assumed` so that it is announced, never
silent; else the file is refused, naming the option that supplies it."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..models import (
    ARCHITECTURES,
    Architecture,
    ModelConfig,
    SwinConfig,
    ViTConfig,
    config_from_dict,
    model_config,
)
from .errors import name_keys
from .overrides import coerce_overrides

Assumed = dict[str, str]  # field -> the convention it was taken from

VIT_HEAD_DIM = 64  # timm's ViT/DeiT heads (DeiT-T 192/3, DeiT-S 384/6, ViT-B 768/12)
SWIN_HEAD_DIM = 32  # timm's Swin heads (Swin-T 96/3 at stage 0, doubling per stage)
HEADS_HINT = "pass --num-heads N (num_heads=N to load_checkpoint) or the model name (--model)"


def detect_architecture(state: Mapping[str, torch.Tensor]) -> Architecture:
    """The registered architecture whose block keys the state_dict holds."""
    arch = next((a for a in ARCHITECTURES.values() if _indices(state, a.block_prefix)), None)
    if arch is None:
        marks = " or ".join(f"'{a.block_prefix}N.' ({a.title})" for a in ARCHITECTURES.values())
        raise ValueError(f"not a ViT/DeiT/Swin model: no {marks} keys among "
                         f"{name_keys(list(state))}; ivit-tvm compiles the ViT, DeiT and Swin "
                         "models I-ViT quantizes, not other architectures")
    return arch


def infer_config(state: Mapping[str, torch.Tensor], name: str | None = None,
                 **given) -> ModelConfig:
    """A model configuration from a state_dict's key names and shapes (`infer_assumed`
    without what it assumed)."""
    return infer_assumed(state, name, given)[0]


def infer_assumed(state: Mapping[str, torch.Tensor], name: str | None = None,
                  given: Mapping[str, Any] | None = None) -> tuple[ModelConfig, Assumed]:
    """(configuration, assumed) from a state_dict's key names and shapes.

    A field shapes cannot tell comes from `given`, else from the model `name`, else from a
    convention (timm's 64-dim ViT/DeiT heads, 32-dim Swin heads) and is then listed in
    `assumed`; where no convention fits, a ValueError names the option to pass.
    """
    named = model_config(name) if name else None
    arch = detect_architecture(state)
    if named is not None and named.arch != arch.name:
        raise ValueError(f"the file holds a {arch.name} model but '{name}' is a {named.arch} "
                         "model; pass the model it was made for, or none")
    return arch.infer_config(state, named, coerce_overrides(arch.config_class, given or {}))


def resolve_config(state: Mapping[str, torch.Tensor], meta: dict, name: str | None,
                   given: Mapping[str, Any]) -> tuple[ModelConfig, str, Assumed]:
    """(configuration, where it came from, assumed fields): metadata first, else inferred
    from shapes; `given` fields must agree with the file (its metadata, else its shapes)."""
    if "config" not in meta:
        config, assumed = infer_assumed(state, name, given)
        _check_given(config, coerce_overrides(type(config), given), "shapes")
        source = f"inferred from shapes, heads from '{name}'" if name else "inferred from shapes"
        if given:
            source += f", given: {', '.join(sorted(given))}"
        return config, source, assumed
    try:
        config = config_from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"unreadable model config in its metadata ({err})") from None
    named = model_config(name) if name else None
    if named is not None and named.arch != config.arch:
        raise ValueError(f"its metadata says {config.arch} but '{name}' is a {named.arch} "
                         "model; pass the model it was made for, or none")
    _check_given(config, coerce_overrides(type(config), given), "metadata")
    return config, "metadata", {}


def _check_given(told: ModelConfig, given: Mapping[str, Any], by: str) -> None:
    """Each given field equals what the file's metadata or shapes (`by`) say."""
    for key, value in given.items():
        if getattr(told, key) != value:
            raise ValueError(f"config field {key}={_text(value)} contradicts the file, whose "
                             f"{by} give {key}={_text(getattr(told, key))}; drop it or pass "
                             "the file it was meant for")


def _text(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def infer_vit(state: Mapping[str, torch.Tensor], named: ViTConfig | None,
              given: Mapping[str, Any]) -> tuple[ViTConfig, Assumed]:
    """DeiT/ViT: grid from pos_embed's tokens; heads given, else from `named`, else timm's
    64-dim heads (announced), else refused."""
    dim, in_chans, patch = _patch_embed(state)
    tokens = _tensor(state, "pos_embed").shape[1]
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"pos_embed has {tokens} tokens, not 1 + a square grid of patches")
    hidden = _tensor(state, "blocks.0.mlp.fc1.weight").shape[0]
    assumed: Assumed = {}
    if "num_heads" in given:
        heads = given["num_heads"]
        if dim % heads:
            raise ValueError(f"config field num_heads={heads} does not divide the file's "
                             f"embed_dim {dim}; pass the model's head count")
    elif named is not None:
        heads = named.num_heads
        if named.embed_dim != dim or dim % heads:
            raise ValueError(f"the named model has embed_dim {named.embed_dim} with {heads} "
                             f"heads but the file's embed_dim is {dim}; {HEADS_HINT}")
    elif dim % VIT_HEAD_DIM == 0:
        heads = dim // VIT_HEAD_DIM
        assumed["num_heads"] = f"timm's {VIT_HEAD_DIM}-dim-head convention (embed_dim {dim})"
    else:
        raise ValueError(f"has no metadata, and the number of heads cannot be inferred: "
                         f"embed_dim {dim} fits no convention ({VIT_HEAD_DIM}-dim heads); "
                         f"{HEADS_HINT}")
    return ViTConfig(
        img_size=grid * patch, patch_size=patch, in_chans=in_chans,
        num_classes=_tensor(state, "head.weight").shape[0], embed_dim=dim,
        depth=len(_indices(state, "blocks.")), num_heads=heads,
        mlp_ratio=hidden / dim, qkv_bias="blocks.0.attn.qkv.bias" in state,
    ), assumed


def infer_swin(state: Mapping[str, torch.Tensor], named: SwinConfig | None,
               given: Mapping[str, Any]) -> tuple[SwinConfig, Assumed]:
    """Stage s works at resolution img / (patch * 2**s). Its window is the table's (2w-1)**2
    rows and its heads the table's columns; a shifted block's attn_mask holds one mask per
    window, (res / w)**2 of them; a stage whose window is smaller than the others' is as small
    as its resolution (I-ViT's rule). What no key tells comes from `given`, `named`, else a
    convention recorded in the returned `assumed`."""
    dim, in_chans, patch = _patch_embed(state)
    stages = len(_indices(state, "layers."))
    depths = tuple(len(_indices(state, f"layers.{s}.blocks.")) for s in range(stages))
    assumed: Assumed = {}
    windows, heads = [], []
    for s in range(stages):
        table = state.get(f"layers.{s}.blocks.0.attn.relative_position_bias_table")
        windows.append(None if table is None else (math.isqrt(table.shape[0]) + 1) // 2)
        heads.append(None if table is None else table.shape[1])
    if None in heads:
        heads = _swin_heads(dim, stages, heads, named, given, assumed)
    known = [w for w in windows if w is not None]
    window = max(known) if known else _told("window_size", given, named, assumed,
                                              SwinConfig.window_size, "SwinConfig's default")
    img_size = None
    for s, stage_window in enumerate(windows):
        resolution = _swin_resolution(state, s, depths[s], stage_window or window, window)
        if resolution is not None:
            img_size = resolution * 2**s * patch
            break
    if img_size is None:
        img_size = _told("img_size", given, named, assumed, window * 2 ** (stages - 1) * patch,
                         "a last stage of one window")
    hidden = _tensor(state, "layers.0.blocks.0.mlp.fc1.weight").shape[0]
    return SwinConfig(
        img_size=img_size, patch_size=patch, in_chans=in_chans,
        num_classes=_tensor(state, "head.weight").shape[0], embed_dim=dim, depths=depths,
        num_heads=tuple(heads), window_size=window, mlp_ratio=hidden / dim,
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in state,
    ), assumed


def _swin_heads(dim: int, stages: int, found: list, named: SwinConfig | None,
                given: Mapping[str, Any], assumed: Assumed) -> list[int]:
    """Heads per stage where a stage has no relative-position table to count them."""
    source = given.get("num_heads") or (named.num_heads if named is not None else None)
    if source is not None:
        if len(source) != stages:
            raise ValueError(f"num_heads={_text(source)} gives {len(source)} stages but the "
                             f"file has {stages}; give one per stage")
        return list(source)
    dims = [dim * 2**s for s in range(stages)]
    if any(d % SWIN_HEAD_DIM for d in dims):
        raise ValueError(f"the number of attention heads is not in the file and its stage "
                         f"widths {dims} fit no convention ({SWIN_HEAD_DIM}-dim heads); pass "
                         "--num-heads H1,H2,... (num_heads=) or --model NAME")
    assumed["num_heads"] = f"Swin's {SWIN_HEAD_DIM}-dim-head convention (embed_dim {dim})"
    return [h if h is not None else d // SWIN_HEAD_DIM for h, d in zip(found, dims, strict=True)]


def _told(key: str, given: Mapping[str, Any], named, assumed: Assumed, default, why: str):
    """A field no key tells: given, else the named model's, else `default` (assumed)."""
    if key in given:
        return given[key]
    if named is not None:
        return getattr(named, key)
    assumed[key] = why
    return default


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
