"""The Relax pipelines for llvm targets: TVM's CPU pipeline plus GEMM packing and schedules.

    ex = tvm.compile(mod, info.target, relax_pipeline=cpu_pipeline(info))

Stages: TVM's legalization and fusion (LegalizeOps ... FuseOps, FuseTIR), PackDenseGEMMs (dense
weights -> packed constants, packing.py), ScheduleCPU (every PrimFunc through the ordered rule
list of rules.py: the attention matmuls rewritten for VNNI, the GEMMs tiled, everything else
generic), then TVM's lowering. It takes the frontend's module as well as one that went through
relay_passes.integer_pipeline first (GEMMs fused with requantize). The int8 GEMMs use
vpdpbusd/vpdpwssd when the target's capabilities include AVX512-VNNI, vectorized loops
otherwise; both are bit-exact. The batch axis stays symbolic throughout. `float_cpu_pipeline`
is the float32 variant (float_dense.py) the FP32 TVM baseline compiles with.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import tvm
from tvm import relax, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import ScheduleError

from ivit_tvm.ops.tir_query import block_names

from ..fold_layout import fusion_passes
from ..shape_order import sort_shape_stores
from ..targets import Capabilities, TargetInfo
from ..tuning.apply import apply_tuned_schedules
from .float_dense import pack_float_matmuls
from .packing import pack_dense_gemms
from .rules import CPU_RULES, CPURule

SCHEDULED = "ivit.cpu_scheduled"  # PrimFunc attribute: ScheduleCPU has been here


def schedule_primfunc(
    func: tirx.PrimFunc, caps: Capabilities, rules: Sequence[CPURule] = CPU_RULES
) -> tirx.PrimFunc:
    """One fused kernel through the rules: every rewrite, then each matching rule's schedule;
    the blocks a rule scheduled or created are claimed, so later rules leave them alone."""
    for rule in rules:
        func = rule.rewrite(func, caps)
    sch = Schedule(func)
    claimed: set[str] = set()
    applied = []
    for rule in rules:
        if not rule.match(sch):
            continue
        before = set(block_names(sch.mod["main"]))
        owned = rule.apply(sch, caps, frozenset(claimed))
        claimed |= owned | (set(block_names(sch.mod["main"])) - before)
        applied.append(rule)
    func = sch.mod["main"]
    for rule in applied:
        func = rule.finish(func, caps)
    return func.with_attr(SCHEDULED, True)


def schedule_cpu(caps: Capabilities) -> tvm.transform.Pass:
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
                updates[gv] = schedule_primfunc(func, caps)
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
    before legalization and between fusion and lowering; shape functions in a fixed order."""

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pipeline(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            seq = tvm.transform.Sequential(
                cpu_generic.library_dispatch_passes(target)
                + list(before_legalize)
                + fusion_passes()
                + list(after_fusion)
                + cpu_generic.dataflow_lower_passes(target)
                + cpu_generic.finalize_passes(target)
                + [sort_shape_stores]  # byte-reproducible libraries
            )
            return seq(mod)

    return _pipeline


def cpu_pipeline(info: TargetInfo) -> tvm.transform.Pass:
    """TVM's llvm pipeline with PackDenseGEMMs and ScheduleCPU between fusion and lowering.

    Between the two, ApplyTunedSchedules (schedules.tuning.apply): a kernel that the tuning
    database holds (ivit-tune's records for this target) takes the recorded schedule and is
    marked SCHEDULED, so the hand-written rules pass over it; without a record, nothing
    changes."""
    return llvm_pipeline(info.target, "IViTCPUPipeline",
                         after_fusion=[pack_dense_gemms(info.caps),
                                       apply_tuned_schedules(info.target, SCHEDULED),
                                       schedule_cpu(info.caps)])


def float_cpu_pipeline(info: TargetInfo) -> tvm.transform.Pass:
    """The float32 variant: float GEMMs packed before legalization, fast exp/erf, the same
    rule list after fusion (its float rules match there)."""
    return llvm_pipeline(
        info.target, "FP32CPUPipeline",
        before_legalize=[relax.transform.FoldConstant(), pack_float_matmuls,
                         relax.transform.FastMathTransform()],
        after_fusion=[schedule_cpu(info.caps)],
    )


__all__ = ["cpu_pipeline", "float_cpu_pipeline", "llvm_pipeline", "schedule_cpu",
           "schedule_primfunc"]
