"""I-ViT checkpoints: written atomically with metadata, read safely into a model with frozen scales.

On disk: `{"model": state_dict, "ivit_meta": {...}}` written by torch.save, so I-ViT's and timm's
scripts take it with `model.load_state_dict(ckpt["model"])`. Reading also accepts what users of
the public release have: a raw state_dict or `{"state_dict": ...}`, with scale buffers saved as
[] or [C] where a fresh module holds [1] (docs/ivit-semantics.md, "Checkpoint format"), and
infers the model configuration from key names and shapes when there is no metadata.
Files are read with torch.load(weights_only=True): a pickle that would run code is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .models import ModelConfig, SwinConfig, ViTConfig, build_model, config_from_dict, model_config
from .quant import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantMatMul,
    quant_act_bits,
    set_calibration,
)

FORMAT_VERSION = 1
META_KEY = "ivit_meta"
STATE_KEYS = ("model", "state_dict")  # wrappers of a state_dict, first match wins
SCALE_SUFFIX = "_scaling_factor"
UNUSED_ACTS = ("qact_softmax", "act_out")  # in I-ViT's key layout, never run: scale stays 0
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # torch.save's legacy format starts with a pickle protocol opcode
KEYS_SHOWN = 5


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message is one line."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What `load_checkpoint` found: where the configuration came from and what it adapted."""

    path: Path
    config: ModelConfig
    config_source: str  # "metadata", or how it was inferred from the state_dict
    meta: dict  # the file's ivit_meta ({} for a state_dict from elsewhere)
    reshaped: tuple[str, ...]  # scale keys saved with another shape than a fresh module's


def save_checkpoint(model: nn.Module, path: str | os.PathLike,
                    metadata_extra: dict | None = None) -> Path:
    """Write `{"model": state_dict, "ivit_meta": ...}` to `path` atomically (temp file in the same
    folder, then rename): `path` is either the old file or the complete new one, never a part."""
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, ViTConfig | SwinConfig):
        raise TypeError(f"{path}: not saved: {type(model).__name__} has no ViTConfig/SwinConfig "
                        "in .config; build it with ivit_tvm.models.build_model")
    zero = uncalibrated_acts(model)
    if zero:
        raise CheckpointError(f"{path}: not saved: the model is not calibrated (scale 0 in "
                              f"{_name_keys(zero)}); run ivit_tvm.ptq.calibrate first")
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "act_bits": quant_act_bits(model),
        "created_by": f"ivit-tvm {__version__}",
        "torch_version": str(torch.__version__),
    }
    if metadata_extra:
        clash = sorted(set(metadata_extra) & set(meta))
        if clash:
            raise ValueError(f"metadata_extra may not set {clash}: they are written by "
                             "save_checkpoint itself")
        try:
            json.dumps(metadata_extra)
        except TypeError as err:
            raise ValueError(f"metadata_extra must hold plain values (str, numbers, lists, "
                             f"dicts) so weights-only loading can read it: {err}") from None
        meta.update(metadata_extra)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    atomic_torch_save({"model": state, META_KEY: meta}, path)
    return path


def load_checkpoint(path: str | os.PathLike, name: str | None = None,
                    **overrides) -> tuple[nn.Module, CheckpointInfo]:
    """The model stored in `path`, in eval mode with its scales frozen, and what was found.

    The configuration comes from the file's metadata, else from its keys and shapes (`name`
    supplies what shapes cannot tell, e.g. ViT's head count); `overrides` replace fields.
    A forward never recomputes a scale, so the reloaded model gives the saved model's outputs.
    """
    path = Path(path)
    obj = read_torch_file(path)
    state = unwrap_state_dict(obj, path)
    if not any(key.endswith(SCALE_SUFFIX) for key in state):
        raise CheckpointError(f"{path}: holds float weights without I-ViT scales, not a "
                              "quantized checkpoint; make one with ivit-quantize MODEL "
                              f"--weights {path.name}")
    meta = obj.get(META_KEY) if isinstance(obj, Mapping) else None
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    version = meta.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written in checkpoint format {meta['format_version']} by "
                              f"{meta.get('created_by', 'a newer ivit-tvm')}; this ivit-tvm "
                              f"reads format {FORMAT_VERSION}: upgrade ivit-tvm")
    try:
        config, source = _resolve_config(state, meta, name, overrides)
        model = build_model(config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    reshaped = _match_scale_shapes(model, state)
    _check_keys(model, state, path, config)
    _check_act_bits(model, meta, path)
    model.load_state_dict(state, strict=True)
    model.eval()
    set_calibration(model, False)
    zero = uncalibrated_acts(model)
    if zero:
        raise CheckpointError(f"{path}: the model in it was never calibrated (scale 0 in "
                              f"{_name_keys(zero)}), so it cannot run; quantize the float model "
                              "with ivit-quantize")
    return model, CheckpointInfo(path, config, source, meta, tuple(reshaped))


def read_torch_file(path: str | os.PathLike, what: str = "checkpoint"):
    """torch.load(weights_only=True) on CPU, every failure as a one-line CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a {what} file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read: {err.strerror}") from None
    if not head:
        raise CheckpointError(f"{path}: the file is empty; write the {what} again")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise CheckpointError(f"{path}: not a PyTorch {what} ({_describe_bytes(head)}); "
                              "expected a file written by torch.save")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # training scripts' args
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise CheckpointError(f"{path}: truncated or corrupt {what} ({_one_line(err)}); "
                                  "write it again") from None
        found = re.search(r"GLOBAL (\S+)", str(err))
        culprit = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: its pickle calls code{culprit}, which weights-only loading never "
            "runs; if you trust the file, re-save just the tensors with "
            "torch.save(model.state_dict(), path)") from None
    except Exception as err:  # torch.load fails on damaged files with many exception types
        raise CheckpointError(f"{path}: truncated or corrupt {what}, or not written by "
                              f"torch.save ({type(err).__name__}: {_one_line(err)}); "
                              "write it again") from None


def unwrap_state_dict(obj, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a loaded file: the object itself, or its "model" / "state_dict" entry.
    A DataParallel "module." prefix on every key is removed."""
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds {_describe_object(obj)}, not a state_dict; expected "
                              "torch.save(model.state_dict()) or {'model': state_dict}")
    wrong = [str(k) for k, v in obj.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if wrong or not obj:
        found = f"non-tensor entries {_name_keys(wrong)}" if wrong else "no entries"
        raise CheckpointError(f"{path}: holds a dict with {found} and no 'model' or "
                              "'state_dict' entry; expected a state_dict of tensors")
    state = dict(obj)
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temp file next to `path`, fsync, then rename over `path`."""
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"{path}: folder {path.parent} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def uncalibrated_acts(model: nn.Module) -> list[str]:
    """QuantActs that run in the forward but still hold scale 0 (never calibrated)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, QuantAct) and name.rpartition(".")[2] not in UNUSED_ACTS
            and not bool(m.act_scaling_factor.abs().max() > 0)]


def infer_config(state: Mapping[str, torch.Tensor], name: str | None = None) -> ModelConfig:
    """A model configuration from a state_dict's key names and shapes.

    ViT/DeiT head count is not in any shape: it comes from `name`, else from head_dim = 64
    (DeiT-T: 192 -> 3 heads). Swin's comes from the relative-position tables (dim / 32 without).
    """
    named = model_config(name) if name else None
    if _indices(state, "blocks."):
        arch = "vit"
    elif _indices(state, "layers."):
        arch = "swin"
    else:
        raise ValueError("cannot tell the architecture: no 'blocks.N.' (ViT/DeiT) or "
                         f"'layers.N.' (Swin) keys among {_name_keys(list(state))}")
    if named is not None and named.arch != arch:
        raise ValueError(f"the file holds a {arch} model but '{name}' is a {named.arch} model; "
                         "pass the model it was made for, or none")
    return _infer_vit(state, named) if arch == "vit" else _infer_swin(state, named)


def config_summary(config: ModelConfig) -> str:
    """One line naming the fields that decide the state_dict's keys and shapes."""
    heads = config.num_heads if isinstance(config, ViTConfig) else list(config.num_heads)
    depth = config.depth if isinstance(config, ViTConfig) else list(config.depths)
    return (f"{config.arch} (img {config.img_size}, patch {config.patch_size}, embed_dim "
            f"{config.embed_dim}, depth {depth}, heads {heads}, {config.num_classes} classes)")


def _resolve_config(state, meta: dict, name: str | None, overrides: dict):
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


def _infer_vit(state, named: ViTConfig | None) -> ViTConfig:
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


def _infer_swin(state, named: SwinConfig | None) -> SwinConfig:
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


def _match_scale_shapes(model: nn.Module, state: dict) -> list[str]:
    """Fit recorded scales saved as [] / [1] / [C] to the modules, in place; return their keys.

    Same element count: the saved tensor is reshaped. A derived scale (I-LayerNorm's per-channel
    output scale, GELU/softmax/matmul output scales) saved per channel where a fresh module holds
    [1]: the module's buffer takes the saved shape. QuantAct scales are per tensor: any other
    shape stays and is reported by the shape check."""
    buffers = dict(model.named_buffers())
    modules = dict(model.named_modules())
    reshaped = []
    for key, saved in state.items():
        if not key.endswith(SCALE_SUFFIX) or key not in buffers:
            continue
        expected = buffers[key]
        if saved.shape == expected.shape:
            continue
        prefix, _, attr = key.rpartition(".")
        module = modules[prefix]
        if saved.numel() == expected.numel():
            state[key] = saved.reshape(expected.shape)
        elif expected.numel() == 1 and saved.dim() == 1 and _per_channel_ok(module, len(saved)):
            setattr(module, attr, torch.zeros(saved.shape, dtype=expected.dtype))
        else:
            continue
        reshaped.append(key)
    return reshaped


def _per_channel_ok(module: nn.Module, channels: int) -> bool:
    if isinstance(module, IntLayerNorm):
        return channels == module.normalized_shape[0]
    return isinstance(module, IntGELU | IntSoftmax | QuantMatMul)


def _check_keys(model: nn.Module, state: dict, path: Path, config: ModelConfig) -> None:
    expected = model.state_dict()
    hint = ("pass the model name or options it was made for, or none to infer them from "
            "the file")
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} key(s) missing for "
                              f"{config_summary(config)}: {_name_keys(missing)}; {hint}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected key(s) for "
                              f"{config_summary(config)}: {_name_keys(unexpected)}; {hint}")
    wrong = [key for key, value in state.items() if value.shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more keys)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{path}: key '{key}' has shape {list(state[key].shape)} in the "
                              f"file but {config_summary(config)} expects "
                              f"{list(expected[key].shape)}{more}; {hint}")


def _check_act_bits(model: nn.Module, meta: dict, path: Path) -> None:
    saved = meta.get("act_bits")
    if not saved:
        return
    ours = quant_act_bits(model)
    differ = [key for key in ours if key in saved and saved[key] != ours[key]]
    if differ:
        key = differ[0]
        raise CheckpointError(f"{path}: '{key}' was quantized to {saved[key]} bits but this "
                              f"model uses {ours[key]} bits; the file needs another ivit-tvm "
                              "version or model definition")


def _name_keys(keys: list[str], limit: int = KEYS_SHOWN) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _describe_bytes(head: bytes) -> str:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with bytes {head[:8].hex(' ')}"
    if all(c.isprintable() or c.isspace() for c in text):
        first = text.strip().splitlines()[0][:30] if text.strip() else ""
        return f"it is a text file starting {first!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _describe_object(obj) -> str:
    if torch.is_tensor(obj):
        return f"a single tensor of shape {list(obj.shape)}"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:160] + ("..." if len(text) > 160 else "") if text else "no detail"


__all__ = [
    "CheckpointError", "CheckpointInfo", "atomic_torch_save", "config_summary", "infer_config",
    "load_checkpoint", "read_torch_file", "save_checkpoint", "uncalibrated_acts",
    "unwrap_state_dict",
]
