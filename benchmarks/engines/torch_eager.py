"""PyTorch eager: the timm model with the checkpoint's float weights, under inference_mode.

FP32 on the CPU; FP16 and BF16 on a CUDA GPU (inputs already on the GPU, synchronized after
every call). On the CPU the timed call goes from a NumPy batch to NumPy logits, like the
other CPU engines.
"""

from __future__ import annotations

import numpy as np

from .base import Engine, Prepared, Settings, Workload, file_bytes


class TorchEager(Engine):
    modules = ("torch", "timm")

    def __init__(self, key: str, label: str, device: str, precision: str):
        self.key, self.label, self.device, self.precision = key, label, device, precision

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        where = (f"{settings.threads} threads" if self.device == "cpu"
                 else "inputs on the GPU, synchronized")
        return Prepared(files={"weights": workload.fp_weights},
                        weights_bytes=file_bytes(workload.fp_weights),
                        notes=f"eager, inference_mode, {where}; weights = fp32 state dict")

    def load(self, prepared: dict, workload: Workload, settings: Settings):
        import torch

        from ..workload import fp_model

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        dtype = dtype[self.precision]
        if self.device == "cpu":
            torch.set_num_threads(settings.threads)
        model = fp_model(workload).to(self.device, dtype)

        def bind(images: np.ndarray):
            if self.device == "cpu":
                def run():
                    with torch.inference_mode():
                        return model(torch.from_numpy(images)).numpy()
                return run
            x = torch.from_numpy(images).to(self.device, dtype)

            def run_cuda():
                with torch.inference_mode():
                    out = model(x)
                torch.cuda.synchronize()
                return out
            return run_cuda

        return bind


TORCH_FP32 = TorchEager("torch-fp32", "PyTorch FP32", "cpu", "fp32")
TORCH_FP16 = TorchEager("torch-fp16", "PyTorch FP16 (GPU)", "cuda", "fp16")
TORCH_BF16 = TorchEager("torch-bf16", "PyTorch BF16 (GPU)", "cuda", "bf16")
