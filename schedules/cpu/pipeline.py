"""The Relax pipeline for llvm targets: TVM's CPU pipeline plus GEMM packing and schedules.

    ex = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(target))

Stages: TVM's legalization and fusion (LegalizeOps ... FuseOps, FuseTIR), PackDenseGEMMs (dense
weights -> packed constants, schedules.cpu.dense), ScheduleCPU (every PrimFunc: the attention
matmuls rewritten for VNNI, the GEMMs tiled, everything else by schedules.cpu.generic), then
TVM's lowering. It takes the frontend's module as well as one that went through
relay_passes.integer_pipeline first (GEMMs fused with requantize, weights packed). The int8
GEMMs use vpdpbusd/vpdpwssd when the target's mcpu/mattr has AVX512-VNNI, vectorized loops
otherwise; both are bit-exact. The batch axis stays symbolic throughout.
"""

from __future__ import annotations

import warnings

import tvm
from tvm import tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import ScheduleError

from .dense import ACC_BLOCK, SHIFT_BLOCK, pack_dense_gemms, schedule_packed_dense
from .division import rewrite_divisions
from .generic import block_names, schedule_generic
from .matmul import (
    MATMUL_BLOCK,
    PV_BLOCKS,
    QK_BLOCKS,
    matmul_kind,
    rewrite_matmul,
    schedule_batch_matmul,
    schedule_packed_attention,
)
from .vnni import has_vnni, vector_bytes

SCHEDULED = "ivit.cpu_scheduled"  # PrimFunc attribute: ScheduleCPU has been here


def schedule_primfunc(func: tirx.PrimFunc, target: tvm.target.Target) -> tirx.PrimFunc:
    """One fused kernel, scheduled: the GEMM blocks by their own rules, the rest generically."""
    vnni = has_vnni(target)
    kind = matmul_kind(func) if vnni else None  # without VNNI, the plain loop is faster
    if kind is not None:
        func = rewrite_matmul(func, kind)
    func = rewrite_divisions(func)
    sch = Schedule(func)
    names = block_names(func)
    claimed: set[str] = set()
    if ACC_BLOCK in names and SHIFT_BLOCK in names:
        schedule_packed_dense(sch, vnni, vector_bytes(target))
        claimed |= {ACC_BLOCK, SHIFT_BLOCK}
    if kind is not None:
        schedule_packed_attention(sch, kind)
        claimed |= set(QK_BLOCKS if kind == "qk" else PV_BLOCKS)
    elif MATMUL_BLOCK in names:
        schedule_batch_matmul(sch, vector_bytes(target))
        claimed.add(MATMUL_BLOCK)
    schedule_generic(sch, vector_bytes(target), skip_prefixes=tuple(claimed))
    return sch.mod["main"].with_attr(SCHEDULED, True)


def schedule_cpu(target: tvm.target.Target) -> tvm.transform.Pass:
    """A module pass scheduling every not yet scheduled PrimFunc (after FuseTIR).

    A kernel whose schedule fails keeps its serial loop nest (correct, slow) with a warning.
    """

    @tvm.transform.module_pass(opt_level=0, name="ScheduleCPU")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or SCHEDULED in (func.attrs or {}):
                continue
            try:
                updates[gv] = schedule_primfunc(func, target)
            except ScheduleError as err:
                warnings.warn(
                    f"schedules.cpu: {gv.name_hint} stays unscheduled (serial loops): {err}",
                    stacklevel=2,
                )
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


def llvm_pipeline(target: tvm.target.Target, name: str, after_fusion: list,
                  before_legalize: list = ()) -> tvm.transform.Pass:
    """TVM's llvm pipeline (dispatch, legalize + fuse, lower, finalize) with extra passes
    before legalization and between fusion and lowering."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + list(before_legalize)
                + cpu_generic.legalize_passes(target)
                + list(after_fusion)
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
            )
            return seq(mod)

    return _pipeline


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's llvm pipeline with PackDenseGEMMs and ScheduleCPU between fusion and lowering."""
    return llvm_pipeline(target, "IViTCPUPipeline",
                         after_fusion=[pack_dense_gemms(target), schedule_cpu(target)])


__all__ = ["cpu_pipeline", "llvm_pipeline", "schedule_cpu", "schedule_primfunc"]
