"""Run a compiled artifact with the TVM runtime alone (no PyTorch, no TVM compiler).

    import ivit_tvm
    model = ivit_tvm.load("deit_s.ivit")
    logits = model.run(images)            # float32 (B, C, H, W) -> float32 (B, classes)
    q_logits, scale = model.run_int(images)   # int32 logits and their (classes,) scale
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np

from .artifact import LIBRARY, ArtifactError, read_manifest


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
        lib = tvm.runtime.load_module(str(self.path / LIBRARY))
        self.vm = VirtualMachine(lib, self.device)

    def _check(self, images: np.ndarray, dtype) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=dtype)
        expected = self.input_shape
        if images.ndim != 4 or images.shape[1:] != expected[1:] or (
                expected[0] != -1 and images.shape[0] != expected[0]):
            want = ("B" if expected[0] == -1 else str(expected[0]),) + expected[1:]
            raise ArtifactError(f"input shape {images.shape} does not match the artifact's "
                                f"({', '.join(map(str, want))}) NCHW")
        return images

    def _call(self, entry: str, array: np.ndarray) -> np.ndarray:
        out = self.vm[entry](self._tvm.runtime.tensor(array, self.device))
        return out.numpy()

    def run_int(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 images -> (int32 logits (B, classes), float32 scale (classes,))."""
        return self._call("main", self._check(images, np.float32)), self.logits_scale

    def run_int8(self, q_images: np.ndarray) -> np.ndarray:
        """int8 images (quantized with meta['input_scale']) -> int32 logits."""
        return self._call("main_int8", self._check(q_images, np.int8))

    def run(self, images: np.ndarray) -> np.ndarray:
        """float32 images -> float32 logits (the int32 logits times their scale)."""
        q_logits, scale = self.run_int(images)
        return q_logits.astype(np.float32) * scale


def load(path: str | os.PathLike, device: str | None = None) -> CompiledModel:
    """Load an artifact written by ivit-compile."""
    return CompiledModel(path, device)
