"""TensorRT FP16 and INT8 on a CUDA GPU, built from the exported ONNX model.

INT8 uses explicit quantization: ONNX Runtime's `quantize_static` writes a QDQ model (s8
weights per channel, s8 activations calibrated on a few random batches: latency does not
depend on the scales) and TensorRT fuses the Q/DQ pairs into INT8 kernels. Both engines get
an optimization profile from batch 1 to the largest benchmarked batch; inputs and outputs stay
on the GPU (PyTorch tensors) and every call is synchronized.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Engine, Prepared, Settings, Workload, file_bytes

CALIBRATION_BATCHES = 4
WORKSPACE_BYTES = 4 << 30


class TensorRT(Engine):
    device = "cuda"
    modules = ("tensorrt", "torch")

    def __init__(self, key: str, label: str, precision: str):
        self.key, self.label, self.precision = key, label, precision

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        import tensorrt as trt

        onnx_path = workload.onnx_fp32
        if self.precision == "int8":
            onnx_path = _qdq_model(workload)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        for flag in ("FP16", "INT8") if self.precision == "int8" else ("FP16",):
            if hasattr(trt.BuilderFlag, flag):  # TensorRT 11 infers precision from Q/DQ
                config.set_flag(getattr(trt.BuilderFlag, flag))
        profile = builder.create_optimization_profile()
        name = network.get_input(0).name
        chw = workload.input_chw
        profile.set_shape(name, (1, *chw), (settings.max_batch, *chw),
                          (settings.max_batch, *chw))
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}")
        out = Path(workload.folder) / f"tensorrt_{self.precision}.plan"
        out.write_bytes(bytes(plan))
        return Prepared(files={"plan": str(out)}, weights_bytes=file_bytes(out),
                        notes=f"TensorRT {trt.__version__}, batch profile 1..{settings.max_batch}"
                              "; weights = engine plan")

    def load(self, prepared: dict, workload: Workload, settings: Settings):
        import tensorrt as trt
        import torch

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(Path(prepared["files"]["plan"]).read_bytes())
        context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        stream = torch.cuda.Stream()

        def bind(images: np.ndarray):
            context.set_input_shape(inputs[0], images.shape)
            tensors = {inputs[0]: torch.from_numpy(images).cuda()}
            for name in names:
                if name not in tensors:
                    shape = tuple(context.get_tensor_shape(name))
                    tensors[name] = torch.empty(shape, device="cuda", dtype=torch.float32)
                context.set_tensor_address(name, tensors[name].data_ptr())

            def run():
                context.execute_async_v3(stream.cuda_stream)
                stream.synchronize()
                return tensors[names[-1]]
            return run

        return bind


def _qdq_model(workload: Workload) -> Path:
    """The FP32 ONNX model with Q/DQ nodes (s8, per-channel weights), calibrated on noise."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from ..workload import INPUT_NAME

    class RandomImages(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            shape = (1, *workload.input_chw)
            self.batches = iter([{INPUT_NAME: rng.standard_normal(shape, dtype=np.float32)}
                                 for _ in range(CALIBRATION_BATCHES)])

        def get_next(self):
            return next(self.batches, None)

    out = Path(workload.folder) / "qdq_int8.onnx"
    quantize_static(workload.onnx_fp32, out, RandomImages(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return out


TENSORRT_FP16 = TensorRT("trt-fp16", "TensorRT FP16 (GPU)", "fp16")
TENSORRT_INT8 = TensorRT("trt-int8", "TensorRT INT8 (GPU)", "int8")
