"""CUDA schedules and builds for ivit-tvm modules.

    target = make_target("cuda", "sm_90")                    # schedules.targets
    executable = build_cuda(mod, target)                     # kernels: dp4a GEMMs, row kernels
    ptx = compile_kernels(cuda_source(executable), "sm_90")  # nvcc proves they compile
    info = export_cuda_library(mod, target, "deit.so")       # loadable .so, GPU or not
"""

from .build import (
    ArtifactInfo,
    KernelReport,
    build_cuda,
    compile_kernels,
    cuda_source,
    export_cuda,
    export_cuda_library,
    find_cuda_home,
    report_cubin,
    report_ptx,
)
from .gemm import GemmStrategy, GemmTile, IntegerGemm
from .pipeline import cuda_pipeline, schedule_module, schedule_rules
from .rowwise import RowReduction

__all__ = [
    "ArtifactInfo", "GemmStrategy", "GemmTile", "IntegerGemm", "KernelReport", "RowReduction",
    "build_cuda", "compile_kernels", "cuda_pipeline", "cuda_source", "export_cuda",
    "export_cuda_library", "find_cuda_home", "report_cubin", "report_ptx", "schedule_module",
    "schedule_rules",
]
