"""The bundled digits example: scikit-learn's handwritten digits, split once, and the small
DeiT checkpoints trained on them (examples/digits/train_digits.py makes every file here).

Images are stored as the dataset has them, 8x8 uint8 values 0..16, so nothing here needs
scikit-learn. `preprocess` turns them into model inputs with timm's evaluation transform, the
same path an ImageFolder of these digits saved as PNG takes through `ivit-eval`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent
DIGITS_SPLIT = DATA_DIR / "digits_split.npz"  # x_train, y_train, x_test, y_test
DIGITS_FP = DATA_DIR / "digits_fp.pth"  # float (timm) weights, {"model": state_dict}
DIGITS_PTQ = DATA_DIR / "digits_ptq.pth"  # I-ViT checkpoint after calibration only
DIGITS_QAT = DATA_DIR / "digits_qat.pth"  # I-ViT checkpoint after QAT: the demo's model
DIGITS_MAX = 16  # pixel values of load_digits run 0..16
SPLITS = ("train", "test")


def load_split(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 8, 8) uint8 in 0..16, labels (N,) int64) of the fixed train or test split."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split '{split}'; choose one of {', '.join(SPLITS)}")
    with np.load(DIGITS_SPLIT) as data:
        return data[f"x_{split}"], data[f"y_{split}"].astype(np.int64)


def to_pil(digit: np.ndarray):
    """One 8x8 digit (0..16) as an RGB PIL image (grey replicated), 0..255."""
    from PIL import Image

    grey = np.round(digit.astype(np.float64) * (255 / DIGITS_MAX)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")  # (8, 8) uint8 -> "L"


def preprocess(digits: np.ndarray, img_size: int):
    """(N, 8, 8) digits -> float32 (N, 3, img_size, img_size) images, timm-normalised."""
    import torch

    from ..ptq import eval_transform

    transform = eval_transform(img_size)
    return torch.stack([transform(to_pil(digit)) for digit in digits])
