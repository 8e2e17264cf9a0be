"""TVM FP32: the same float model, imported into Relax and compiled like the INT8 one.

Import: `torch.export` with a dynamic batch axis, then `relax.frontend.torch.
from_exported_program` (TVM's ONNX frontend cannot import timm's Swin: its Reshape of a
concatenated shape fails). Compile: the same llvm target as ivit-tvm and the float variant of
its CPU backend (schedules.cpu.pipeline.float_cpu_pipeline: the same passes and rule list,
float GEMM and batch-matmul rules, FMA in place of VNNI). Neither engine is MetaSchedule-tuned.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Prepared, Settings, Workload
from .tvm_common import RUNTIME_ONLY, llvm_target, load_vm

MAX_BATCH = 4096  # the upper bound torch.export needs for the symbolic batch


class TVMFloat32(Engine):
    key = "tvm-fp32"
    label = "TVM FP32"
    precision = "fp32"
    modules = ("tvm",)
    runtime_env = RUNTIME_ONLY

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        import torch
        import tvm
        from ivit_tvm.schedules.cpu.pipeline import float_cpu_pipeline
        from tvm.relax.frontend.torch import from_exported_program

        from ..workload import fp_model

        model = fp_model(workload)
        example = torch.zeros(2, *workload.input_chw)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        mod = from_exported_program(program, keep_params_as_input=False)
        target = llvm_target(settings.mcpu)
        executable = tvm.compile(mod, target=target.target,
                                 relax_pipeline=float_cpu_pipeline(target))
        library = Path(workload.folder) / "tvm_fp32.so"
        executable.export_library(str(library))
        return Prepared(files={"library": str(library)}, weights_bytes=library.stat().st_size,
                        notes=f"torch.export -> Relax; llvm -mcpu={settings.mcpu}, "
                              "ivit-tvm's CPU pipeline and schedules for float (FP32 FMA "
                              "GEMM in place of VNNI), dynamic batch; weights = .so")

    def import_runtime(self) -> None:
        from tvm.runtime import vm  # noqa: F401

    def load(self, prepared: dict, workload: Workload, settings: Settings):
        import tvm

        main = load_vm(prepared["files"]["library"])["main"]

        def bind(images: np.ndarray):
            def run():
                out = main(tvm.runtime.tensor(images))  # torch.export's outputs: a tuple
                return (out if hasattr(out, "numpy") else out[0]).numpy()
            return run

        return bind
