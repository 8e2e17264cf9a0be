"""Model builders: DeiT/ViT and Swin with I-ViT's quantized modules and key layout."""

from __future__ import annotations

from torch import nn

from .config import MODEL_CONFIGS, ModelConfig, SwinConfig, ViTConfig, model_config
from .registry import (
    ARCHITECTURES,
    CONFIG_CLASSES,
    Architecture,
    architecture,
    build_model,
    config_from_dict,
)


def create_model(name: str, **overrides) -> nn.Module:
    """Build a named model (e.g. 'deit_small', 'swin_tiny_patch4_window7_224') with overrides."""
    return build_model(model_config(name, **overrides))


__all__ = [
    "ARCHITECTURES", "Architecture", "CONFIG_CLASSES", "MODEL_CONFIGS", "ModelConfig",
    "SwinConfig", "ViTConfig", "architecture", "build_model", "config_from_dict", "create_model",
    "model_config",
]
