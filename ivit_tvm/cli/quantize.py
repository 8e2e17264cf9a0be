"""ivit-quantize: calibrate a float (timm) or random model into an I-ViT integer checkpoint."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click
import torch
from tqdm import tqdm

from ..checkpoint import (
    SCALE_SUFFIX,
    config_summary,
    read_torch_file,
    save_checkpoint,
    unwrap_state_dict,
)
from ..models import build_model, model_config
from ..models.config import ALIASES
from ..models.fp_weights import parameter_names
from ..ptq import calibrate, folder_batches, image_files, quantize_fp, random_batches
from .common import CONTEXT, note, reports_errors

# 128 images by default (was 1024): the EMA ranges (momentum 0.95) settle within a few
# batches. Measured on the bundled digits model (450 test images, integer top-1): 512 images
# 98.22%, 256 98.22%, 128 98.44%, 64 97.78%, 32 98.00%.
DEFAULT_CALIB_BATCHES = 8
DEFAULT_CALIB_BATCH_SIZE = 16


@click.command("ivit-quantize", context_settings=CONTEXT)
@click.argument("model")
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path),
              help="Float (timm) weights to quantize: a state_dict saved with torch.save, raw or "
                   "as {'model': ...} / {'state_dict': ...}. Read with weights-only loading; "
                   "nothing is downloaded.")
@click.option("--random-init", is_flag=True,
              help="Quantize a randomly initialised model instead of --weights (for latency "
                   "benchmarks: its predictions mean nothing).")
@click.option("--calib", required=True, metavar="DIR|random",
              help="Calibration images: a folder of images (flat, or ImageFolder class "
                   "subfolders), preprocessed as timm evaluates (resize to img_size/0.875, "
                   "center crop, ImageNet mean/std); or 'random' for standard-normal images "
                   "(latency work only).")
@click.option("--num-batches", type=click.IntRange(min=1), default=DEFAULT_CALIB_BATCHES,
              show_default=True,
              help="Calibration batches to run (fewer if the folder has fewer images). Each "
                   "image costs one fake-quant forward (2-3x the float model's).")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_CALIB_BATCH_SIZE,
              show_default=True, help="Images per calibration batch.")
@click.option("--img-size", type=click.IntRange(min=1),
              help="Input resolution in pixels. [default: the model's, e.g. 224]")
@click.option("--num-classes", type=click.IntRange(min=1),
              help="Classifier outputs. [default: the rows of the weights' classifier, else "
                   "the model's 1000]")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random initialisation, the random images and the order in which "
                   "calibration images are drawn from DIR.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write: {'model': state_dict, 'ivit_meta': ...}, written "
                   "atomically (complete or not at all).")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@reports_errors
def quantize_cmd(model: str, weights: Path | None, random_init: bool, calib: str,
                 num_batches: int, batch_size: int, img_size: int | None,
                 num_classes: int | None, seed: int, output: Path, force: bool) -> None:
    """Quantize MODEL to I-ViT's integer-only form: calibrate its activation scales on a few
    batches of images, freeze them and write a checkpoint with the configuration in metadata.

    MODEL is a timm name (e.g. deit_small_patch16_224) or a short name: one of
    deit_tiny, deit_small, deit_base, vit_small, vit_base, vit_large, swin_tiny, swin_small,
    swin_base.
    """
    if weights is not None and random_init:
        raise ValueError("pass --weights FILE or --random-init, not both")
    if weights is None and not random_init:
        raise ValueError("pass --weights FILE (float timm weights), or --random-init for a "
                         "latency-only model")
    if output.exists() and not force:
        raise ValueError(f"{output} exists; pass --force to overwrite it")
    if not output.parent.is_dir():
        raise ValueError(f"{output}: folder {output.parent} does not exist; create it first")
    overrides = {key: value for key, value in (("img_size", img_size),
                                               ("num_classes", num_classes)) if value is not None}
    config = model_config(model, **overrides)
    fp_state = None
    if weights is not None:
        fp_state = _read_fp_weights(weights)
        if num_classes is None:
            config = dataclasses.replace(config, num_classes=_weights_classes(config, fp_state))
    batches, count, images = _calibration_batches(calib, config, num_batches, batch_size, seed)
    bar = tqdm(total=images, desc="calibrating", unit="img", disable=None)
    batches = _counted(batches, bar)
    torch.manual_seed(seed)
    if fp_state is None:
        note("randomly initialised weights: the model's predictions mean nothing")
        quantized = calibrate(build_model(config), batches)
    else:
        quantized = quantize_fp(config, fp_state, batches)
    bar.close()
    name = ALIASES.get(model, model)
    save_checkpoint(quantized, output, metadata_extra={
        "model_name": name,
        "weights": "random-init" if weights is None else str(weights),
        "calibration": {"images": calib, "num_images": images, "num_batches": count,
                        "batch_size": batch_size, "seed": seed},
    })
    click.echo(f"wrote {output}: {name}, {config_summary(config)}, calibrated on {images} "
               f"images")


def _counted(batches, bar):
    """The batches, advancing `bar` by each batch's images once the model has run it (the bar
    shows images/s)."""
    for images in batches:
        yield images
        bar.update(len(images))


def _calibration_batches(calib: str, config, num_batches: int, batch_size: int, seed: int):
    """(batches, how many batches, how many images) for --calib DIR|random."""
    if calib == "random":
        note("scales calibrated on random images fit latency work, not accuracy")
        batches = random_batches(config, num_batches, batch_size, seed)
        return batches, num_batches, num_batches * batch_size
    images = min(len(image_files(calib)), num_batches * batch_size)
    batches = folder_batches(calib, config, num_batches, batch_size, seed)
    return batches, math.ceil(images / batch_size), images


def _read_fp_weights(path: Path) -> dict[str, torch.Tensor]:
    state = unwrap_state_dict(read_torch_file(path, what="weights file"), path)
    if any(key.endswith(SCALE_SUFFIX) for key in state):
        raise ValueError(f"{path}: already an I-ViT quantized checkpoint (it has scales); "
                         "--weights takes float timm weights")
    return state


def _weights_classes(config, fp_state: dict[str, torch.Tensor]) -> int:
    """Rows of the float weights' classifier, or the configuration's when it has none."""
    head = fp_state.get(parameter_names(config)["head.weight"])
    return config.num_classes if head is None else head.shape[0]

