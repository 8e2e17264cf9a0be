"""Model configurations: the architectures I-ViT quantizes, with timm's dimensions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class ViTConfig:
    """DeiT / ViT: a cls token, learned position embedding and `depth` identical blocks."""

    arch: str = "vit"
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ViTConfig:
        """Inverse of `to_dict`."""
        return cls(**d)


@dataclass(frozen=True)
class SwinConfig:
    """Swin: windowed attention over stages joined by patch merging, token-average head."""

    arch: str = "swin"
    img_size: int = 224
    patch_size: int = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = field(default=(2, 2, 6, 2))
    num_heads: tuple[int, ...] = field(default=(3, 6, 12, 24))
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["depths"], d["num_heads"] = list(self.depths), list(self.num_heads)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SwinConfig:
        """Inverse of `to_dict` (lists back to tuples)."""
        return cls(**{**d, "depths": tuple(d["depths"]), "num_heads": tuple(d["num_heads"])})


ModelConfig = ViTConfig | SwinConfig

# Named models (timm names and the short names I-ViT uses).
MODEL_CONFIGS: dict[str, ModelConfig] = {
    "deit_tiny_patch16_224": ViTConfig(embed_dim=192, depth=12, num_heads=3),
    "deit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "deit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_small_patch16_224": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "swin_tiny_patch4_window7_224": SwinConfig(embed_dim=96, depths=(2, 2, 6, 2),
                                               num_heads=(3, 6, 12, 24)),
    "swin_small_patch4_window7_224": SwinConfig(embed_dim=96, depths=(2, 2, 18, 2),
                                                num_heads=(3, 6, 12, 24)),
    "swin_base_patch4_window7_224": SwinConfig(embed_dim=128, depths=(2, 2, 18, 2),
                                               num_heads=(4, 8, 16, 32)),
}
ALIASES = {
    "deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224", "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224", "vit_large": "vit_large_patch16_224",
    "swin_tiny": "swin_tiny_patch4_window7_224", "swin_small": "swin_small_patch4_window7_224",
    "swin_base": "swin_base_patch4_window7_224",
}


def model_config(name: str, **overrides) -> ModelConfig:
    """The configuration of a named model, with any field overridden (img_size, depth, ...)."""
    key = ALIASES.get(name, name)
    if key not in MODEL_CONFIGS:
        known = ", ".join(sorted(ALIASES))
        raise ValueError(f"unknown model '{name}': choose one of {known} (or a timm name)")
    base = MODEL_CONFIGS[key]
    valid = {f.name for f in fields(base)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown {base.arch} config field(s) {sorted(unknown)}; valid: "
                         f"{sorted(valid)}")
    return type(base)(**{**asdict(base), **overrides})

