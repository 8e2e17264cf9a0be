"""The architectures as data: everything that differs between ViT/DeiT and Swin, in one table.

Callers look an architecture up by its name (`config.arch`) and never branch on it. Code the
table points at (torch modules, Relax emitters, timm, checkpoint inference) is named
'module:attribute' and imported on first use, so reading the table loads none of it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import ModelConfig, SwinConfig, ViTConfig


@dataclass(frozen=True)
class Lazy:
    """A callable named 'module:attribute', imported when first called."""

    path: str

    def resolve(self):
        """The named callable (imports its module)."""
        module, _, attribute = self.path.partition(":")
        return getattr(importlib.import_module(module), attribute)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Architecture:
    """One architecture: its configuration, PyTorch model, Relax emitter, timm twin and how a
    checkpoint's keys reveal it."""

    name: str  # ModelConfig.arch
    title: str  # how people name it in messages
    config_class: type[ModelConfig]
    build_model: Lazy  # (config) -> nn.Module in fake-quant mode, calibration on
    emit: Lazy  # (IntegerGraph, model, q_images, scale, batch) -> (int32 logits, their scale)
    timm_model: Lazy  # (**timm_fields) -> timm's float model
    timm_fields: tuple[str, ...]  # config fields timm's constructor takes as keyword arguments
    timm_names: Lazy  # (config) -> {our float parameter: timm state-dict key}
    infer_config: Lazy  # (state_dict, named config or None, given fields) -> (config, assumed)
    block_prefix: str  # state-dict keys "<prefix>N." mark this architecture
    depth_field: str  # the config field holding the block count(s)

    def config_from_dict(self, d: Mapping[str, Any]) -> ModelConfig:
        """The configuration written by `to_dict` (checkpoint metadata)."""
        return self.config_class.from_dict(d)


ARCHITECTURES: dict[str, Architecture] = {
    "vit": Architecture(
        name="vit",
        title="ViT/DeiT",
        config_class=ViTConfig,
        build_model=Lazy("ivit_tvm.models.vit:VisionTransformer"),
        emit=Lazy("ivit_tvm.frontend.vit:emit_vit"),
        timm_model=Lazy("timm.models.vision_transformer:VisionTransformer"),
        timm_fields=("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth",
                     "num_heads", "mlp_ratio", "qkv_bias"),
        timm_names=Lazy("ivit_tvm.models.fp_weights:vit_names"),
        infer_config=Lazy("ivit_tvm.checkpoint.infer:infer_vit"),
        block_prefix="blocks.",
        depth_field="depth",
    ),
    "swin": Architecture(
        name="swin",
        title="Swin",
        config_class=SwinConfig,
        build_model=Lazy("ivit_tvm.models.swin:SwinTransformer"),
        emit=Lazy("ivit_tvm.frontend.swin:emit_swin"),
        timm_model=Lazy("timm.models.swin_transformer:SwinTransformer"),
        timm_fields=("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depths",
                     "num_heads", "window_size", "mlp_ratio", "qkv_bias"),
        timm_names=Lazy("ivit_tvm.models.fp_weights:swin_names"),
        infer_config=Lazy("ivit_tvm.checkpoint.infer:infer_swin"),
        block_prefix="layers.",
        depth_field="depths",
    ),
}
CONFIG_CLASSES = tuple(arch.config_class for arch in ARCHITECTURES.values())


def architecture(name: str) -> Architecture:
    """The registered architecture called `name` (a ModelConfig's `arch`)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{name}': the registered ones are "
                         f"{', '.join(ARCHITECTURES)} (ivit_tvm/models/registry.py)")
    return ARCHITECTURES[name]


def config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """Inverse of `to_dict` (checkpoint metadata): the class is chosen by d["arch"]."""
    return architecture(d.get("arch")).config_from_dict(d)


def build_model(config: ModelConfig):
    """A fresh quantized model (fake-quant mode, calibration on) for a configuration."""
    return architecture(config.arch).build_model(config)


__all__ = ["ARCHITECTURES", "CONFIG_CLASSES", "Architecture", "Lazy", "architecture",
           "build_model", "config_from_dict"]
