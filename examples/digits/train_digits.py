"""Reproduce the bundled digits example: split, FP training, PTQ, QAT, and the accuracy table.

    .venv/bin/python examples/digits/train_digits.py --results examples/digits/results.json

writes ivit_tvm/data/digits_{split.npz,fp.pth,ptq.pth,qat.pth} (or --out-dir). scikit-learn's
8x8 handwritten digits (1797 images) are split once (25% test, stratified, random_state 0);
10% of the training split is held out as validation, which picks QAT's best
epoch, so the test split is never used for a choice. Images go through timm's evaluation
transform at 32x32 (ivit_tvm.data.preprocess). The float model is timm's VisionTransformer in a
small DeiT configuration (CONFIG); PTQ calibrates it on training images; QAT fine-tunes the
PTQ model with ivit_tvm.qat (fake-quant, STE, distillation from the float model).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ivit_tvm import data
from ivit_tvm.checkpoint import atomic_torch_save, save_checkpoint
from ivit_tvm.evaluate import build_fp_model
from ivit_tvm.models import model_config
from ivit_tvm.ptq import quantize_fp
from ivit_tvm.qat import QATSettings, finetune, integer_top1

CONFIG = model_config("deit_tiny", img_size=32, patch_size=4, embed_dim=64, depth=4,
                      num_heads=4, num_classes=10)
TEST_FRACTION = 0.25
VAL_FRACTION = 0.1
SPLIT_SEED = 0


def write_split(path: Path) -> None:
    """The fixed train/test split of load_digits, as uint8 (N, 8, 8) images and labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images.astype(np.uint8), digits.target.astype(np.uint8),
        test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=digits.target)
    np.savez_compressed(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def fit_val_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stratified hold-out of VAL_FRACTION of the training split (seeded)."""
    from sklearn.model_selection import train_test_split

    return train_test_split(np.arange(len(labels)), test_size=VAL_FRACTION,
                            random_state=SPLIT_SEED, stratify=labels)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image random affine: rotation +-10 deg, scale 0.9..1.1, shift +-2 px (of 32)."""
    b = images.shape[0]
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(10)
    scale = 0.9 + torch.rand(b, generator=generator) * 0.2
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * 2 / images.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, padding_mode="border", align_corners=False)


class Batches:
    """Re-iterable (images, labels) batches; shuffled and augmented when `train`."""

    def __init__(self, images, labels, batch_size: int, train: bool, seed: int = 0):
        self.images, self.labels = images, torch.as_tensor(labels, dtype=torch.int64)
        self.batch_size, self.train = batch_size, train
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator) if self.train else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            images = self.images[idx]
            yield (augment(images, self.generator) if self.train else images), self.labels[idx]


def train_fp(train: Batches, val: Batches, epochs: int, lr: float, seed: int):
    """timm ViT from scratch: AdamW, warm-up then cosine, label smoothing 0.1."""
    torch.manual_seed(seed)
    model = build_fp_model(CONFIG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps, warmup = epochs * len(train), 3 * len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup,
                                 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    for epoch in range(1, epochs + 1):
        model.train()
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch % 10 == 0 or epoch == epochs:
            print(f"FP epoch {epoch}: loss {loss.item():.4f}, val top-1 "
                  f"{fp_top1(model, val):.2f}%", flush=True)
    return model.eval()


@torch.no_grad()
def fp_top1(model, batches) -> float:
    model.eval()
    hits = count = 0
    for images, labels in batches:
        hits += int((model(images).argmax(1) == labels).sum())
        count += len(labels)
    return 100.0 * hits / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=data.DATA_DIR)
    parser.add_argument("--fp-epochs", type=int, default=100)
    parser.add_argument("--fp-lr", type=float, default=1e-3)
    parser.add_argument("--qat-epochs", type=int, default=10)
    parser.add_argument("--qat-lr", type=float, default=5e-5)
    parser.add_argument("--distill", type=float, default=0.5, help="distillation weight")
    parser.add_argument("--calib-batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=None,
                        help="also write the accuracy table (JSON) here, e.g. "
                             "examples/digits/results.json")
    parser.add_argument("--reuse-fp", action="store_true",
                        help="start from the FP weights already in --out-dir")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out_dir
    split_path, fp_path = out / data.DIGITS_SPLIT.name, out / data.DIGITS_FP.name
    ptq_path, qat_path = out / data.DIGITS_PTQ.name, out / data.DIGITS_QAT.name
    seconds = {}

    write_split(split_path)
    with np.load(split_path) as arrays:
        x_train, y_train = arrays["x_train"], arrays["y_train"].astype(np.int64)
        x_test, y_test = arrays["x_test"], arrays["y_test"].astype(np.int64)
    fit, held = fit_val_indices(y_train)
    train_images = data.preprocess(x_train, CONFIG.img_size)
    test = Batches(data.preprocess(x_test, CONFIG.img_size), y_test, 150, train=False)
    train = Batches(train_images[fit], y_train[fit], 64, train=True, seed=args.seed)
    val = Batches(train_images[held], y_train[held], 150, train=False)
    calib = Batches(train_images[fit], y_train[fit], 64, train=False)

    t = time.perf_counter()
    if args.reuse_fp:
        fp_state = torch.load(fp_path, weights_only=True)["model"]
        fp_model = build_fp_model(CONFIG)
        fp_model.load_state_dict(fp_state)
    else:
        fp_model = train_fp(train, val, args.fp_epochs, args.fp_lr, args.seed)
        fp_state = {k: v.detach().clone() for k, v in fp_model.state_dict().items()}
        atomic_torch_save({"model": fp_state, "config": CONFIG.to_dict()}, fp_path)
    seconds["fp_training"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    calib_images = [images for images, _ in calib][: args.calib_batches]
    ptq_model = quantize_fp(CONFIG, fp_state, calib_images)
    seconds["ptq"] = round(time.perf_counter() - t, 1)
    save_checkpoint(ptq_model, ptq_path, metadata_extra={
        "example": "digits", "stage": "ptq", "calibration_images": 64 * len(calib_images)})
    ptq_test = integer_top1(ptq_model, test)

    settings = QATSettings(epochs=args.qat_epochs, lr=args.qat_lr, distill_weight=args.distill,
                           seed=args.seed)
    result = finetune(ptq_model, train, val, settings, teacher=fp_model, out=qat_path,
                      metadata_extra={"example": "digits", "stage": "qat"}, progress=False)
    seconds["qat"] = result.seconds
    table = {
        "fp_top1": round(fp_top1(fp_model, test), 3),
        "ptq_int_top1": round(ptq_test, 3),
        "qat_int_top1": round(integer_top1(ptq_model, test), 3),
        "qat_best_epoch": result.best_epoch,
        "val": {"fp_top1": round(fp_top1(fp_model, val), 3), "qat_history": result.history},
        "seconds": seconds,
        "bytes": {p.name: p.stat().st_size for p in (split_path, fp_path, ptq_path, qat_path)},
        "test_images": len(y_test),
    }
    text = json.dumps(table, indent=1)
    print(text)
    if args.results is not None:
        args.results.write_text(text + "\n")


if __name__ == "__main__":
    main()
