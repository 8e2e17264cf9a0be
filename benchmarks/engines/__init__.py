"""Benchmark engines, one module each, all behind `base.Engine` (see there for the protocol).

Modules import their framework inside methods only, so listing engines needs none of them
(and the GPU script can reuse the engines without TVM's compiler).
"""

from __future__ import annotations

from .base import Engine, Prepared, Settings, Workload
from .ivit_int8 import IViTInt8
from .openvino import OV_FP32, OV_INT8
from .ort import ORT_FP32, ORT_INT8
from .tensorrt import TENSORRT_FP16, TENSORRT_INT8
from .torch_eager import TORCH_BF16, TORCH_FP16, TORCH_FP32
from .tvm_fp32 import TVMFloat32

REFERENCE = "ivit-tvm"  # every engine's latency is also given as a ratio to this one's
ENGINES: dict[str, Engine] = {engine.key: engine for engine in (
    IViTInt8(), TVMFloat32(), TORCH_FP32, ORT_FP32, ORT_INT8, OV_FP32, OV_INT8,
    TORCH_FP16, TORCH_BF16, TENSORRT_FP16, TENSORRT_INT8,
)}
CPU_ENGINES = ("ivit-tvm", "tvm-fp32", "torch-fp32", "ort-fp32", "ort-int8", "ov-fp32",
               "ov-int8")


def get_engine(key: str) -> Engine:
    if key not in ENGINES:
        raise ValueError(f"unknown engine '{key}': choose from {', '.join(ENGINES)}")
    return ENGINES[key]


__all__ = ["CPU_ENGINES", "ENGINES", "REFERENCE", "Engine", "Prepared", "Settings",
           "Workload", "get_engine"]
