"""Build an ivit-tvm module for CUDA in this process with the project's pipeline.

Without a CUDA driver loaded (no libcuda.so.1), TVM's CUDA runtime library cannot load and
`tvm.compile` keeps the kernels as CUDA source: the executable is fine for inspection and nvcc
checks (inspect.py, toolkit.compile_kernels), not for a loadable artifact (export.py builds
that under a driver stub). With a driver, kernels are compiled with nvcc (toolkit.nvcc_kernels).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.tirx.compilation_pipeline import get_tir_pipeline, register_tir_pipeline

from ..targets import TargetInfo
from .device_indexing import pair_adjacent_stores_pass, simplify_device_indexing_pass
from .gemm import GemmStrategy
from .pipeline import cuda_pipeline
from .toolkit import nvcc_kernels

# The tensor-core GEMM's software pipeline (mma.py) copies global -> shared with cp.async.
# cp.async for the tensor-core GEMMs' pipelines; CUDA graphs: TVM's RewriteCUDAGraph lifts
# the static-shape part of main into one captured graph, which for a fixed-batch artifact is
# nearly every kernel (launched as one graph after the first call); with a symbolic batch
# nothing is static and every kernel is launched on its own, as without the option
LOWERING_CONFIG = {"tirx.use_async_copy": 1, "relax.backend.use_cuda_graph": True}
TIR_PIPELINE = "ivit_cuda"  # TVM's s_tir pipeline, its device finalization with one pass more


def _device_passes() -> tvm.transform.Pass:
    """TVM's device finalization with SimplifyDeviceIndexing after LowerWarpMemory, so the mma
    fragments are indexed by constants and stay in registers, and PairAdjacentStores after
    the simplifier, so the epilogue stores int8 column pairs as char2 (device_indexing.py)."""
    return tvm.transform.Sequential([
        tirx.transform.LowerWarpMemory(),
        simplify_device_indexing_pass,
        tirx.transform.StmtSimplify(),
        pair_adjacent_stores_pass,
        tirx.transform.LowerIntrin(),
    ])


def _tir_pipeline():
    lower, host_passes, _ = get_tir_pipeline("s_tir")
    return lower, host_passes, _device_passes


register_tir_pipeline(TIR_PIPELINE, _tir_pipeline)


def build_cuda(
    mod: tvm.IRModule, info: TargetInfo, strategy: GemmStrategy = GemmStrategy.AUTO,
    gemm_record: list | None = None,
) -> tvm.runtime.Executable:
    """tvm.compile with the project's CUDA pipeline: kernels compiled with nvcc where a driver
    is loaded (info.caps.cuda_driver), else kept as CUDA source. The tile chosen for each GEMM
    is appended to `gemm_record` (gemm.gemm_choices) when one is given."""
    pipeline = cuda_pipeline(info.target, strategy, gemm_record=gemm_record)
    with tvm.transform.PassContext(config=LOWERING_CONFIG):
        if info.caps.cuda_driver:
            with nvcc_kernels(info.caps.cuda_arch), info.target:
                return tvm.compile(mod, info.target, relax_pipeline=pipeline,
                                   tir_pipeline=TIR_PIPELINE)
        return tvm.compile(mod, info.target, relax_pipeline=pipeline, tir_pipeline=TIR_PIPELINE)


def device_modules(executable, kind: str | None = "cuda") -> list[tvm.runtime.Module]:
    """The runtime modules of `kind` (None: all) in an executable or module, recursively."""
    root = executable.mod if isinstance(executable, tvm.runtime.Executable) else executable
    found, stack = [], [root]
    while stack:
        module = stack.pop()
        if kind is None or module.kind == kind:
            found.append(module)
        stack.extend(module.imports)
    return found
