"""CUDA schedules and builds for ivit-tvm modules.

- pipeline: the Relax pipeline and its ordered dlight rules (gemm: integer GEMMs, on tensor
  cores for sm_80+ (mma, mma_tiles, mma_intrin) else dp4a; rowwise: row reductions);
- twin: the CPU (llvm) twin of a scheduled CUDA GEMM, to check its indexing bit for bit;
- build: tvm.compile in this process (nvcc kernels with a driver, CUDA source without),
  its TIR pipeline with device_indexing (mma fragments in registers, row guards without
  division);
- export: loadable libraries with or without a GPU (driver stub subprocess, export_worker);
- toolkit: the CUDA toolkit and nvcc; inspect: source, PTX and cubin reports.

    info = make_target("cuda", arch="sm_90")                         # schedules.backend
    source = cuda_source(build_cuda(mod, info))                      # no GPU needed
    report = report_ptx(compile_kernels(source, "sm_90"), "sm_90")   # nvcc proves they compile
    artifact = export_cuda_library(mod, info.target, "deit.so")      # loadable .so, GPU or not
"""

from .build import build_cuda
from .export import ArtifactInfo, export_cuda_library
from .gemm import GemmStrategy, GemmTile, IntegerGemm, gemm_choices
from .inspect import KernelReport, cuda_source, report_cubin, report_ptx
from .mma_tiles import TILE_TABLE, MmaTile, choose_tile
from .pipeline import cuda_pipeline, schedule_module, schedule_rules
from .rowwise import RowReduction
from .toolkit import compile_kernels, find_cuda_home

__all__ = [
    "ArtifactInfo", "GemmStrategy", "GemmTile", "IntegerGemm", "KernelReport", "RowReduction",
    "build_cuda", "compile_kernels", "cuda_pipeline", "cuda_source", "export_cuda_library",
    "find_cuda_home", "report_cubin", "report_ptx", "schedule_module", "schedule_rules",
    "TILE_TABLE", "MmaTile", "choose_tile", "gemm_choices",
]
