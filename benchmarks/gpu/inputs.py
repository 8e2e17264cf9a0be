"""Images both machines make alike from a seed, so no batch-32 image file is carried.

PCG64's integer stream is stable across NumPy versions and platforms (NEP 19), and dividing
small integers by a power of two is exact in float32: the build machine and the GPU machine
get bit-identical float32 images, hence identical int8 inputs after entry quantization.
"""

from __future__ import annotations

import numpy as np

LEVELS = 512  # integers in [-LEVELS, LEVELS), scaled by 1/256: images in [-2, 2)


def seeded_images(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """float32 images of `shape` (B, C, H, W) from `seed`, bit-identical on every machine."""
    rng = np.random.Generator(np.random.PCG64(seed))
    q = rng.integers(-LEVELS, LEVELS, size=shape, dtype=np.int32)  # (B, C, H, W) int32
    return q.astype(np.float32) / np.float32(256)


def seeded_int8(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """int8 GEMM operands of `shape` from `seed`, full range [-128, 127]."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


def image_seed(model: str, batch: int) -> int:
    """The seed of `model`'s batch-`batch` check images (stable, readable)."""
    return sum(map(ord, model)) * 1000 + batch
