"""Does a state_dict fit the model built for it: keys, shapes, scale layouts, bit widths and
calibration. Every mismatch is a one-line CheckpointError naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models import ModelConfig, architecture
from ..quant import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
    quant_act_bits,
)
from ..quant.constants import qrange
from .errors import CheckpointError, name_keys

SCALE_SUFFIX = "_scaling_factor"
UNUSED_ACTS = ("qact_softmax", "act_out")  # in I-ViT's key layout, never run: scale stays 0


def uncalibrated_acts(model: nn.Module) -> list[str]:
    """QuantActs that run in the forward but still hold scale 0 (never calibrated); a NaN or
    negative scale is `check_values`' case."""
    return [name for name, m in model.named_modules()
            if isinstance(m, QuantAct) and name.rpartition(".")[2] not in UNUSED_ACTS
            and bool((m.act_scaling_factor == 0).all())]


def config_summary(config: ModelConfig) -> str:
    """One line naming the fields that decide the state_dict's keys and shapes."""
    fields = config.to_dict()  # tuples as lists
    depth = fields[architecture(config.arch).depth_field]
    return (f"{config.arch} (img {config.img_size}, patch {config.patch_size}, embed_dim "
            f"{config.embed_dim}, depth {depth}, heads {fields['num_heads']}, "
            f"{config.num_classes} classes)")


def match_scale_shapes(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
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


def check_keys(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
               config: ModelConfig) -> None:
    """Every key of `model` in `state` with its shape, and no other key."""
    expected = model.state_dict()
    hint = ("pass the model name or options it was made for, or none to infer them from "
            "the file")
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} key(s) missing for "
                              f"{config_summary(config)}: {name_keys(missing)}; {hint}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} unexpected key(s) for "
                              f"{config_summary(config)}: {name_keys(unexpected)}; {hint}")
    wrong = [key for key, value in state.items() if value.shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        more = f" (and {len(wrong) - 1} more keys)" if len(wrong) > 1 else ""
        raise CheckpointError(f"{path}: key '{key}' has shape {list(state[key].shape)} in the "
                              f"file but {config_summary(config)} expects "
                              f"{list(expected[key].shape)}{more}; {hint}")


def check_act_bits(model: nn.Module, meta: dict, path: Path) -> None:
    """The activation bit widths recorded in the metadata are the model's."""
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


def check_values(model: nn.Module, path: Path) -> None:
    """Every number the integer model uses is usable: activation scales finite and not negative
    (0 is `uncalibrated_acts`' case), weight scales positive and finite in every channel,
    integer weights and biases integers within their bit width, every other tensor finite."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, QuantAct) and name.rpartition(".")[2] not in UNUSED_ACTS:
            _refuse_where(path, f"{prefix}act_scaling_factor", module.act_scaling_factor,
                          lambda t: ~torch.isfinite(t) | (t < 0),
                          "an activation scale must be a positive finite number; calibrate "
                          "again (ivit-quantize) or re-export the checkpoint")
        elif isinstance(module, QuantLinear | QuantConv2d):
            scale = "fc_scaling_factor" if isinstance(module, QuantLinear) else \
                "conv_scaling_factor"
            _refuse_where(path, f"{prefix}{scale}", getattr(module, scale),
                          lambda t: ~torch.isfinite(t) | (t <= 0),
                          "a weight scale must be positive and finite in every channel; "
                          "quantize the weights again (ivit-quantize) or re-export the "
                          "checkpoint")
            _check_integers(path, f"{prefix}weight_integer", module.weight_integer,
                            module.weight_bit)
            if module.bias_integer is not None:
                _check_integers(path, f"{prefix}bias_integer", module.bias_integer,
                                module.bias_bit)
        elif isinstance(module, IntLayerNorm):
            _check_integers(path, f"{prefix}bias_integer", module.bias_integer, 32)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            _refuse_where(path, key, value, lambda t: ~torch.isfinite(t),
                          "every value must be finite; re-export the checkpoint")


def _check_integers(path: Path, key: str, tensor: torch.Tensor, bits: int) -> None:
    low, high = qrange(bits)
    _refuse_where(path, key, tensor,
                  lambda t: ~torch.isfinite(t) | (t != torch.round(t)) | (t < low) | (t > high),
                  f"it must hold integers in [{low}, {high}] ({bits} bits); quantize the "
                  "weights again (ivit-quantize) or re-export the checkpoint")


def _refuse_where(path: Path, key: str, tensor: torch.Tensor, bad, fix: str) -> None:
    """A CheckpointError naming `key`, the first element where `bad` holds and its value."""
    mask = bad(tensor.detach().double())
    if not bool(mask.any()):
        return
    index = [int(i) for i in torch.nonzero(mask)[0]]
    value = float(tensor.detach().double()[tuple(index)])
    if tensor.numel() == 1:
        where = ""
    elif tensor.dim() == 1:
        where = f" channel {index[0]}"
    else:
        where = f" at {index}"
    count = int(mask.sum())
    more = f" (and {count - 1} more)" if count > 1 else ""
    raise CheckpointError(f"{path}: '{key}'{where} is {value:g}{more}: {fix}")


def _per_channel_ok(module: nn.Module, channels: int) -> bool:
    if isinstance(module, IntLayerNorm):
        return channels == module.normalized_shape[0]
    return isinstance(module, IntGELU | IntSoftmax | QuantMatMul)
