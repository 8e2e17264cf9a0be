"""Model builders: DeiT/ViT and Swin with I-ViT's quantized modules and key layout."""

from __future__ import annotations

from torch import nn

from .config import (
    MODEL_CONFIGS,
    ModelConfig,
    SwinConfig,
    ViTConfig,
    config_from_dict,
    model_config,
)


def build_model(config: ModelConfig) -> nn.Module:
    """A fresh quantized model (fake-quant mode, calibration on) for a configuration."""
    if isinstance(config, ViTConfig):
        from .vit import VisionTransformer

        return VisionTransformer(config)
    if isinstance(config, SwinConfig):
        from .swin import SwinTransformer

        return SwinTransformer(config)
    raise TypeError(f"no builder for {type(config).__name__}")


def create_model(name: str, **overrides) -> nn.Module:
    """Build a named model (e.g. 'deit_small', 'swin_tiny_patch4_window7_224') with overrides."""
    return build_model(model_config(name, **overrides))


__all__ = [
    "MODEL_CONFIGS", "ModelConfig", "SwinConfig", "ViTConfig", "build_model", "config_from_dict",
    "create_model", "model_config",
]
