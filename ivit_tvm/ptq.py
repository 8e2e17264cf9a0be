"""Post-training quantization: calibrate a quantized model's activation scales on a few batches.

Calibration follows I-ViT: every QuantAct tracks its input range by EMA (momentum 0.95) while
fake-quant forwards run; the scales are then frozen. One more forward at the frozen scales
leaves every integer buffer (weight_integer, bias_integer, I-LayerNorm's bias_integer) computed
from the final scales, so `forward_integer` and a saved checkpoint agree with `forward`; those
buffers depend on the weights and scales only, so that forward takes a single image.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from .models import ModelConfig, build_model, model_config
from .models.fp_weights import load_fp_weights
from .quant import QuantAct, set_calibration

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_CROP_FRACTION = 0.875  # resize the shorter side to img_size / 0.875, then center-crop


def calibrate(model: nn.Module, batches: Iterable[torch.Tensor]) -> nn.Module:
    """Fresh EMA ranges over `batches` (float images (B, C, H, W)), then frozen scales.

    Returns the model in eval mode with calibration off: later forwards never move a scale.
    """
    model.eval()
    set_calibration(model, True)
    for module in model.modules():
        if isinstance(module, QuantAct):
            module.min_val = module.max_val = None  # start from this data, not stored scales
    device = next(model.parameters()).device
    last = None
    with torch.no_grad():
        for images in batches:
            last = images.to(device)  # (B, C, H, W) float
            model(last)
        set_calibration(model, False)
        if last is None:
            raise ValueError("calibration needs at least one batch of images; got none")
        model(last[:1])  # refresh integer buffers at the frozen scales (data-independent)
    return model


def random_batches(config: ModelConfig, n: int, batch: int,
                   seed: int = 0) -> Iterator[torch.Tensor]:
    """`n` batches of standard-normal images (batch, C, H, W): scales for latency work only."""
    _check_counts(n, batch)
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, config.in_chans, config.img_size, config.img_size)
    return (torch.randn(shape, generator=generator) for _ in range(n))


def random_calibrated(config: ModelConfig, batches: int = 2, batch_size: int = 4,
                      seed: int = 0) -> nn.Module:
    """A randomly initialised model calibrated on random images, frozen: the one model for tests
    and latency benchmarks (what `ivit-quantize --random-init --calib random` makes).

    Seeds torch's global generator with `seed` for the weights, so equal arguments give equal
    models."""
    torch.manual_seed(seed)
    return calibrate(build_model(config), random_batches(config, batches, batch_size, seed=seed))


def eval_transform(img_size: int) -> transforms.Compose:
    """timm/DeiT evaluation preprocessing: bicubic resize, center crop, ImageNet normalisation."""
    return transforms.Compose([
        transforms.Resize(int(img_size / EVAL_CROP_FRACTION),
                          interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def image_files(folder: str | Path) -> list[Path]:
    """Every image under `folder` (ImageFolder's class subfolders or a flat folder), sorted;
    hidden files (".name", e.g. macOS "._x.jpg") are skipped."""
    root = Path(folder)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(f"calibration folder {root} {what}; pass a folder of images "
                                "(flat or ImageFolder class subfolders), or 'random'")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMG_EXTENSIONS)
    if not files:
        raise ValueError(f"calibration folder {root} holds no images "
                         f"({', '.join(IMG_EXTENSIONS)}), in it or in its subfolders")
    return files


def folder_batches(folder: str | Path, config: ModelConfig, n: int, batch: int,
                   seed: int = 0) -> Iterator[torch.Tensor]:
    """Up to `n` batches of preprocessed images from `folder`, drawn in a seeded random order
    so that an ImageFolder's classes are mixed; fewer batches if the folder has fewer images."""
    _check_counts(n, batch)
    files = image_files(folder)
    random.Random(seed).shuffle(files)
    transform = eval_transform(config.img_size)
    files = files[: n * batch]
    return (torch.stack([_load_image(path, transform) for path in files[start:start + batch]])
            for start in range(0, len(files), batch))


def quantize_fp(name_or_config: str | ModelConfig, fp_state_dict: dict[str, torch.Tensor],
                batches: Iterable[torch.Tensor]) -> nn.Module:
    """A calibrated, frozen quantized model from float (timm) weights: the one-call PTQ API."""
    config = (model_config(name_or_config) if isinstance(name_or_config, str)
              else name_or_config)
    model = build_model(config)
    load_fp_weights(model, fp_state_dict)
    return calibrate(model, batches)


def _load_image(path: Path, transform) -> torch.Tensor:
    try:
        image = default_loader(str(path))
    except OSError as err:
        raise ValueError(f"cannot read calibration image {path}: {err}") from err
    return transform(image)


def _check_counts(n: int, batch: int) -> None:
    if n < 1 or batch < 1:
        raise ValueError(f"number of batches and batch size must be at least 1 (got {n}, {batch})")


__all__ = [
    "calibrate", "eval_transform", "folder_batches", "image_files", "quantize_fp",
    "random_batches", "random_calibrated",
]
