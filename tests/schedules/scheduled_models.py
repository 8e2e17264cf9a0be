"""The reduced test models as cpu_pipeline has them after ScheduleCPU (before TVM's lowering),
built once per configuration and shared by the CPU schedule tests."""

from __future__ import annotations

import functools

import tvm
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu.packing import pack_dense_gemms
from ivit_tvm.schedules.cpu.pipeline import schedule_cpu
from ivit_tvm.schedules.fold_layout import fusion_passes
from support import quantized
from tvm import tirx
from tvm.target import codegen

from ivit_tvm.compile import apply_graph_passes, lower_model

HOST = get_backend("llvm").resolve(tvm.target.Target(
    {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}
))


@functools.cache
def scheduled(config) -> tvm.IRModule:
    """The module as cpu_pipeline has it after ScheduleCPU (before TVM's lowering)."""
    mod = apply_graph_passes(lower_model(quantized(config), HOST)).mod
    with HOST.target:
        passes = [*fusion_passes(), pack_dense_gemms(HOST.caps), schedule_cpu(HOST.caps)]
        return tvm.transform.Sequential(passes)(mod)


def prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
