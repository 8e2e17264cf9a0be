"""ivit-qat: I-ViT quantization-aware training of a checkpoint on an ImageFolder dataset."""

from __future__ import annotations

from pathlib import Path

import click

from .common import (
    CONTEXT,
    announced_assumptions,
    given_fields,
    model_options,
    note,
    reports_errors,
)


@click.command("ivit-qat", context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="Dataset root holding train/ and val/ ImageFolders (one subfolder per "
                   "class, sorted names = label index), as ImageNet is laid out.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to write: the epoch with the best integer-only top-1 on val/ "
                   "(the starting model counts), in I-ViT's format, written atomically after "
                   "every improvement.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--lr", type=float, default=1e-5, show_default=True,
              help="AdamW peak learning rate, cosine-decayed to 0 over the run.")
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Training images with RandomResizedCrop + horizontal flip (timm's basic "
                   "training transform), or with the evaluation transform.")
@click.option("--distill", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Weight of knowledge distillation from a float teacher (0: cross-entropy "
                   "only).")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Float timm weights of the teacher. Default: CHECKPOINT's own float "
                   "parameters in timm's float model.")
@click.option("--limit-train", type=click.IntRange(min=1), default=None,
              help="Train on a seeded random subset of this many images per epoch.")
@click.option("--limit-val", type=click.IntRange(min=1), default=None,
              help="Score each epoch on a seeded random subset of this many val images.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader worker processes decoding images.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--model", "name", default=None, metavar="NAME",
              help="Model name when the checkpoint has no ivit-tvm metadata (see ivit-compile).")
@model_options
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@reports_errors
def qat_cmd(checkpoint, data_dir, output, epochs, lr, weight_decay, batch_size, augment,
            distill, teacher, limit_train, limit_val, workers, seed, name, num_heads,
            config_items, force, quiet):
    """Fine-tune an I-ViT CHECKPOINT (from ivit-quantize, an earlier ivit-qat run or I-ViT's
    own code) with quantization-aware training: fake-quant forward, straight-through
    gradients, activation ranges tracked by EMA while training and frozen to score every epoch
    with the exact integer path. The best epoch is written to OUTPUT."""
    import torch

    from ..checkpoint import load_checkpoint
    from ..evaluate import image_folder, load_fp_model
    from ..qat import QATSettings, finetune

    if output.exists() and not force:
        raise ValueError(f"{output} exists; pass --force to overwrite it")
    if not output.parent.is_dir():
        raise ValueError(f"{output}: folder {output.parent} does not exist; create it first")
    settings = QATSettings(epochs=epochs, lr=lr, weight_decay=weight_decay,
                           distill_weight=distill, seed=seed)
    with announced_assumptions():
        model, info = load_checkpoint(checkpoint, name=name,
                                      **given_fields(num_heads, config_items))
    config = info.config
    train_set = image_folder(data_dir / "train", config.img_size, config.num_classes,
                             limit_train, seed, _train_transform(config.img_size, augment))
    val_set = image_folder(data_dir / "val", config.img_size, config.num_classes, limit_val,
                           seed)
    generator = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                        num_workers=workers, generator=generator)
    val = torch.utils.data.DataLoader(val_set, batch_size=batch_size, num_workers=workers)
    teacher_model = load_fp_model(model, teacher) if distill > 0 else None
    result = finetune(model, train, val, settings, teacher=teacher_model, out=output,
                      metadata_extra=_carried_metadata(info.meta, checkpoint, data_dir),
                      progress=not quiet, log=lambda msg: click.echo(msg, err=True))
    if result.best_epoch == 0:
        note("no epoch beat the starting model: OUTPUT holds the starting model")
    click.echo(f"wrote {output}: integer top-1 on {len(val_set)} val images "
               f"{result.start_top1:.2f}% -> {result.best_top1:.2f}% (epoch "
               f"{result.best_epoch} of {epochs}, {result.seconds:.0f} s, "
               f"{result.steps_per_s:.2f} QAT steps/s)")


def _train_transform(img_size: int, augment: bool):
    """timm's basic training transform (random resized crop, flip), or the eval transform."""
    from torchvision import transforms

    from ..ptq import IMAGENET_MEAN, IMAGENET_STD, eval_transform

    if not augment:
        return eval_transform(img_size)
    return transforms.Compose([
        transforms.RandomResizedCrop(img_size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _carried_metadata(meta: dict, checkpoint: Path, data_dir: Path) -> dict:
    """The starting checkpoint's own metadata (model name, calibration, ...) and where QAT
    started from; save_checkpoint writes the format fields again and finetune the QAT record."""
    own = {"format_version", "config", "act_bits", "created_by", "torch_version", "qat"}
    carried = {key: value for key, value in meta.items() if key not in own}
    return {**carried, "qat_from": str(checkpoint), "data": str(data_dir)}
