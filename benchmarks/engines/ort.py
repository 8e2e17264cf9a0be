"""ONNX Runtime on the CPU: the exported FP32 model, and its dynamic INT8 quantization.

INT8 is `onnxruntime.quantization.quantize_dynamic`: activations u8 (always, in dynamic
quantization: ORT's MatMulInteger is many times slower with s8 activations on x86, see
docs/tvm-notes.md, "Measuring") and weights s8, the u8 x s8 form that
AVX512-VNNI computes (on the 2-core VNNI machine, DeiT-S batch 1 took 47 ms with s8 weights
and 65 ms with u8 weights). ORT's quantization pre-processing changed neither, so it is not run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Engine, Prepared, Settings, Workload, file_bytes


class OnnxRuntime(Engine):
    modules = ("onnxruntime",)

    def __init__(self, key: str, label: str, precision: str):
        self.key, self.label, self.precision = key, label, precision

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        threads = f"{settings.threads} intra-op threads, graph optimizations all"
        if self.precision == "fp32":
            return Prepared(files={"onnx": workload.onnx_fp32},
                            weights_bytes=file_bytes(workload.onnx_fp32),
                            notes=f"{threads}; weights = .onnx")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out = Path(workload.folder) / "ort_int8.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its advice to pre-process (measured: no change)
        try:
            quantize_dynamic(workload.onnx_fp32, out, weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
        return Prepared(files={"onnx": str(out)}, weights_bytes=file_bytes(out),
                        notes=f"quantize_dynamic, u8 activations x s8 weights; {threads}; "
                              "weights = .onnx")

    def load(self, prepared: dict, workload: Workload, settings: Settings):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(prepared["files"]["onnx"], options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: lambda: session.run(None, {name: images})[0]


ORT_FP32 = OnnxRuntime("ort-fp32", "ONNX Runtime FP32", "fp32")
ORT_INT8 = OnnxRuntime("ort-int8", "ONNX Runtime INT8", "int8")
