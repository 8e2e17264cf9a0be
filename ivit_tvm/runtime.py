"""Run a compiled artifact with the TVM runtime alone (no PyTorch, no TVM compiler).

    import ivit_tvm
    model = ivit_tvm.load("deit_s.ivit")
    logits = model.run(images)            # float32 (B, C, H, W) -> float32 (B, classes)
    q_logits, scale = model.run_int(images)   # int32 logits and their (classes,) scale

`load` checks the manifest's schema and model.so's size and SHA-256 before loading it; the
run methods refuse images the compiled model would silently misread (wrong dtype, NaN/Inf,
wrong shape) with an InputError.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from .artifact import ArtifactError, read_manifest, verify_library


def import_tvm():
    """`import tvm`, plus its CUDA runtime when only the runtime library is loaded.

    With TVM_USE_RUNTIME_LIB=1 (runtime-only deployments) TVM loads libtvm_runtime alone and
    never its CUDA part, so CUDA artifacts would not load ("cuda not registered"): load it here.
    """
    import tvm

    loaded = getattr(tvm.base, "_LOADED_LIBS", {})
    if "tvm_runtime" in loaded and "tvm_runtime_cuda" not in loaded:
        cuda_lib = Path(loaded["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
        if cuda_lib.is_file():
            try:
                loaded["tvm_runtime_cuda"] = ctypes.CDLL(str(cuda_lib), mode=ctypes.RTLD_GLOBAL)
            except OSError:  # no CUDA driver on this machine: CPU artifacts still run
                pass
    return tvm


class InputError(ValueError):
    """Images a compiled model cannot take as given (dtype, values or shape)."""


class CompiledModel:
    """A loaded artifact: call `run` / `run_int` / `run_int8` on NumPy arrays."""

    def __init__(self, path: str | os.PathLike, device: str | None = None):
        tvm = import_tvm()
        from tvm.runtime.vm import VirtualMachine

        self.path = Path(path)
        self.meta = read_manifest(self.path)
        self.logits_scale = np.asarray(self.meta["logits_scale"], dtype=np.float32)
        self.input_shape = tuple(self.meta["input_shape"])  # (B or -1, C, H, W)
        kind = device or self.meta["target"]["kind"]
        self.device = tvm.cuda(0) if kind == "cuda" else tvm.cpu(0)
        if kind == "cuda" and not self.device.exist:
            raise ArtifactError(f"{self.path}: compiled for CUDA but no CUDA device is visible; "
                                "run it on the GPU machine")
        self._tvm = tvm
        lib = tvm.runtime.load_module(str(verify_library(self.path, self.meta)))
        self.vm = VirtualMachine(lib, self.device)

    def _check_shape(self, images: np.ndarray) -> None:
        expected = self.input_shape
        if images.ndim != 4 or images.shape[1:] != expected[1:] or (
                expected[0] != -1 and images.shape[0] != expected[0]) or images.shape[0] == 0:
            want = ("B" if expected[0] == -1 else str(expected[0]),) + expected[1:]
            raise InputError(f"input shape {images.shape} does not match the artifact's "
                             f"({', '.join(map(str, want))}) NCHW; pass a batch of that shape")

    def _float_images(self, images) -> np.ndarray:
        """Float images as float32, refusing integer pixels and NaN/Inf."""
        images = np.asarray(images)
        if images.dtype.kind != "f":
            raise InputError(f"run and run_int take float images normalised as in training (e.g. "
                             f"(pixels / 255 - mean) / std), got {images.dtype}; normalise them "
                             "first, or quantize them with meta['input_scale'] and use run_int8")
        self._check_shape(images)
        with np.errstate(over="ignore"):  # float64 beyond float32's range -> Inf, refused
            images = np.ascontiguousarray(images, dtype=np.float32)
        bad = ~np.isfinite(images)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"{int(bad.sum())} pixels are NaN or infinite (or beyond float32's "
                             f"range), the first at index {where}; replace them before running")
        return images

    def _int8_images(self, q_images) -> np.ndarray:
        q_images = np.asarray(q_images)
        if q_images.dtype != np.int8:
            raise InputError(f"run_int8 takes int8 images (quantized with meta['input_scale']"
                             f"), got {q_images.dtype}; quantize them first, or pass float "
                             "images to run")
        self._check_shape(q_images)
        return np.ascontiguousarray(q_images)

    def _call(self, entry: str, array: np.ndarray) -> np.ndarray:
        out = self.vm[entry](self._tvm.runtime.tensor(array, self.device))
        return out.numpy()

    def run_int(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 images -> (int32 logits (B, classes), float32 scale (classes,))."""
        return self._call("main", self._float_images(images)), self.logits_scale

    def run_int8(self, q_images: np.ndarray) -> np.ndarray:
        """int8 images (quantized with meta['input_scale']) -> int32 logits."""
        return self._call("main_int8", self._int8_images(q_images))

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 images -> float32 logits (the int32 logits times their scale)."""
        q_logits, scale = self.run_int(images)
        return q_logits.astype(np.float32) * scale


def load(path: str | os.PathLike, device: str | None = None) -> CompiledModel:
    """Load an artifact written by ivit-compile."""
    return CompiledModel(path, device)
