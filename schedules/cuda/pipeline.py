"""The Relax pipeline for CUDA: legalize, fuse, schedule every PrimFunc for the GPU, lower.

    ex = tvm.compile(mod, target, relax_pipeline=cuda_pipeline(target))

Schedules, first match wins: the project's integer GEMM (gemm.py: tensor cores on sm_80+
where a tile fits (mma.py), else dp4a) and row kernels
(rowwise.py), then dlight's generic GPU rules for the rest (reshapes, transposes,
elementwise requantize, the input quantizer). A PrimFunc that leaves the schedulers without
thread bindings is an error naming it, not a failure deep inside codegen.
Where a CUDA driver is loaded, build through build.build_cuda: TVM's default kernel compiler
(NVRTC) forces --use_fast_math, whose approximate division breaks the input quantizer.
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.relax.backend.cuda import pipeline as cuda_backend
from tvm.s_tir import dlight

from ivit_tvm.ops.tir_query import has_thread_binding

from ..fold_layout import fusion_passes
from .gemm import GemmStrategy, GemmTile, IntegerGemm, gemm_choices
from .rowwise import RowReduction


def schedule_rules(
    strategy: GemmStrategy = GemmStrategy.AUTO, tile: GemmTile | None = None,
    tensorize: bool = True,
) -> list:
    """The ordered dlight rules that schedule an ivit-tvm module (first match wins);
    tensorize=False leaves the GEMMs' intrinsics as their descriptions (twin.py)."""
    return [
        IntegerGemm(strategy, tile, tensorize=tensorize),  # tensor cores (mma.py) or dp4a
        RowReduction(),
        dlight.gpu.Matmul(),
        dlight.gpu.GEMV(),
        dlight.gpu.Reduction(),
        dlight.gpu.GeneralReduction(),
        dlight.gpu.Fallback(),
    ]


def unscheduled_functions(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs in `mod` without any GPU thread binding."""
    return sorted(
        gv.name_hint
        for gv, func in mod.functions_items()
        if isinstance(func, tirx.PrimFunc) and not has_thread_binding(func)
    )


@tvm.transform.module_pass(opt_level=0, name="RequireGPUSchedule")
def require_gpu_schedule(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Fail with the names of PrimFuncs that no rule scheduled for the GPU."""
    missing = unscheduled_functions(mod)
    if missing:
        raise RuntimeError(
            f"no GPU schedule for {len(missing)} PrimFunc(s): {', '.join(missing)}; add a rule "
            "for them in schedules/cuda/pipeline.py:schedule_rules"
        )
    return mod


def cuda_fusion_passes(strategy: GemmStrategy = GemmStrategy.AUTO,
                       tile: GemmTile | None = None) -> list[tvm.transform.Pass]:
    """fusion_passes for the current cuda target: Shiftmax folds into the probs @ V GEMMs
    that IntegerGemm puts on tensor cores (their row prologue, prologue.py), and layout into
    the dense GEMMs reading it (fold_layout.dense_group: Swin's window partition and roll)."""
    target = tvm.target.Target.current()
    if target is None:
        raise ValueError("cuda_fusion_passes: call it inside a cuda target (`with target:`)")
    gemm_rule = IntegerGemm(strategy, tile)
    return fusion_passes(lambda func: gemm_rule.runs_on_tensor_cores(func, target),
                         fold_dense=True)


def scheduling_passes(strategy: GemmStrategy = GemmStrategy.AUTO, tile: GemmTile | None = None,
                      tensorize: bool = True) -> list[tvm.transform.Pass]:
    """cuda_fusion_passes, then every PrimFunc through schedule_rules (inside a cuda
    target)."""
    return [*cuda_fusion_passes(strategy, tile),
            dlight.ApplyDefaultSchedule(*schedule_rules(strategy, tile, tensorize))]


def record_gemm_choices(sink: list) -> tvm.transform.Pass:
    """A pass that appends gemm.gemm_choices(mod) (PrimFunc, strategy, tile, n, k) to `sink`."""

    @tvm.transform.module_pass(opt_level=0, name="RecordGemmChoices")
    def record(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        sink.extend(gemm_choices(mod))
        return mod

    return record


def cuda_pipeline(
    target: tvm.target.Target,
    strategy: GemmStrategy = GemmStrategy.AUTO,
    tile: GemmTile | None = None,
    gemm_record: list | None = None,
) -> tvm.transform.Pass:
    """The relax_pipeline for tvm.compile on a CUDA target (see the module docstring); the
    tile chosen for each GEMM is appended to `gemm_record` when one is given."""
    if target.kind.name != "cuda":
        raise ValueError(f"cuda_pipeline needs a cuda target, got {target.kind.name!r}")

    @tvm.transform.module_pass(opt_level=0, name="IViTCudaPipeline")
    def pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            passes = [
                *cuda_backend.library_dispatch_passes(target),
                *scheduling_passes(strategy, tile),
                *([record_gemm_choices(gemm_record)] if gemm_record is not None else []),
                require_gpu_schedule,
                *cuda_backend.dataflow_lower_passes(target),
                *cuda_backend.finalize_passes(target),
            ]
            return tvm.transform.Sequential(passes)(mod)

    return pipeline


def schedule_module(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    strategy: GemmStrategy = GemmStrategy.AUTO,
    tile: GemmTile | None = None,
) -> tvm.IRModule:
    """Fuse and schedule `mod` (no lowering): the scheduled PrimFuncs, for inspection/tests."""
    with target:
        return tvm.transform.Sequential(scheduling_passes(strategy, tile))(mod)
