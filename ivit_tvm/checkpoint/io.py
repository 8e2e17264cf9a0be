"""Checkpoint files: save atomically with metadata, load into a model with frozen scales, read
any torch.save file safely (weights_only) with one-line errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..models import CONFIG_CLASSES, ModelConfig, build_model
from ..quant import quant_act_bits, set_calibration
from .errors import AssumedConfigWarning, CheckpointError, name_keys
from .infer import detect_architecture, resolve_config
from .validate import (
    SCALE_SUFFIX,
    check_act_bits,
    check_keys,
    check_values,
    match_scale_shapes,
    uncalibrated_acts,
)

FORMAT_VERSION = 1
META_KEY = "ivit_meta"
STATE_KEYS = ("model", "state_dict")  # wrappers of a state_dict, first match wins
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
PICKLE_MAGIC = b"\x80"  # torch.save's legacy format starts with a pickle protocol opcode


@dataclass(frozen=True)
class CheckpointInfo:
    """What `load_checkpoint` found: where the configuration came from and what it adapted."""

    path: Path
    config: ModelConfig
    config_source: str  # "metadata", or how it was inferred from the state_dict
    meta: dict  # the file's ivit_meta ({} for a state_dict from elsewhere)
    reshaped: tuple[str, ...]  # scale keys saved with another shape than a fresh module's
    # fields no metadata, name or given value told, taken from a convention: {field: which}
    assumed: dict[str, str] = field(default_factory=dict)


def save_checkpoint(model: nn.Module, path: str | os.PathLike,
                    metadata_extra: dict | None = None) -> Path:
    """Write `{"model": state_dict, "ivit_meta": ...}` to `path` atomically (temp file in the same
    folder, then rename): `path` is either the old file or the complete new one, never a part."""
    path = Path(path)
    config = getattr(model, "config", None)
    if not isinstance(config, CONFIG_CLASSES):
        kinds = "/".join(cls.__name__ for cls in CONFIG_CLASSES)
        raise TypeError(f"{path}: not saved: {type(model).__name__} has no {kinds} in .config; "
                        "build it with ivit_tvm.models.build_model")
    zero = uncalibrated_acts(model)
    if zero:
        raise CheckpointError(f"{path}: not saved: the model is not calibrated (scale 0 in "
                              f"{name_keys(zero)}); run ivit_tvm.ptq.calibrate first")
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

    The configuration comes from the file's metadata, else from its keys and shapes. What
    shapes cannot tell (ViT's head count) comes from `overrides` (e.g. num_heads=4; strings
    as the command line gives them are parsed), else the model `name`, else a convention
    (timm's 64-dim heads), which is announced: an AssumedConfigWarning per field and
    `info.assumed`. Where no convention fits, or an override contradicts the file's shapes or
    metadata, a CheckpointError names the field. Values the integer model cannot use (NaN or
    negative scales, weights outside int8) are refused, naming the key.
    A forward never recomputes a scale, so the reloaded model gives the saved model's outputs.
    """
    path = Path(path)
    obj = read_torch_file(path)
    state = unwrap_state_dict(obj, path)
    try:
        detect_architecture(state)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
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
        config, source, assumed = resolve_config(state, meta, name, overrides)
        model = build_model(config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    reshaped = match_scale_shapes(model, state)
    check_keys(model, state, path, config)
    check_act_bits(model, meta, path)
    model.load_state_dict(state, strict=True)
    model.eval()
    set_calibration(model, False)
    zero = uncalibrated_acts(model)
    if zero:
        raise CheckpointError(f"{path}: the model in it was never calibrated (scale 0 in "
                              f"{name_keys(zero)}), so it cannot run; quantize the float model "
                              "with ivit-quantize")
    check_values(model, path)
    for key, reason in assumed.items():
        value = getattr(config, key)
        value = ",".join(map(str, value)) if isinstance(value, tuple) else value
        warnings.warn(AssumedConfigWarning(path, key, value, reason), stacklevel=2)
    return model, CheckpointInfo(path, config, source, meta, tuple(reshaped), assumed)


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
        found = f"non-tensor entries {name_keys(wrong)}" if wrong else "no entries"
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

