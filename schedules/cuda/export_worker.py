"""Subprocess side of export.export_cuda_library: build one module for CUDA and export it.

Run as `python -m ivit_tvm.schedules.cuda.export_worker '<json request>'` with libcuda.so.1
(real or the stub) loadable; prints a JSON line with the kinds of the modules in the written
library and the strategy and tile of each GEMM (gemm.gemm_choices).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(request: dict) -> dict:
    import tvm

    from ..backend import make_target
    from .build import build_cuda, device_modules
    from .gemm import GemmStrategy

    info = make_target("cuda", arch=request["arch"])
    if not info.caps.cuda_driver:
        raise SystemExit(
            "TVM's CUDA runtime did not load (libcuda.so.1 not found): the export would hold "
            "CUDA source that no machine can load; refusing"
        )
    mod = tvm.ir.load_json(Path(request["mod"]).read_text())
    gemms: list[dict] = []
    executable = build_cuda(mod, info, GemmStrategy(request["strategy"]), gemm_record=gemms)
    executable.export_library(request["out"])
    loaded = tvm.runtime.load_module(request["out"])  # raises when a loader is missing
    return {"modules": [module.kind for module in device_modules(loaded, kind=None)],
            "gemms": gemms}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
