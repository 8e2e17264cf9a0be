"""The reduced test models as cpu_pipeline has them after ScheduleCPU (before TVM's lowering),
built once per configuration and shared by the CPU schedule tests."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu.packing import pack_dense_gemms
from ivit_tvm.schedules.cpu.pipeline import cpu_pipeline, schedule_cpu
from ivit_tvm.schedules.fold_layout import fusion_passes
from support import images, quantized
from tvm import relax, tirx
from tvm.target import codegen

from ivit_tvm.compile import apply_graph_passes, lower_model
from ivit_tvm.models import model_config

HOST = get_backend("llvm").resolve(tvm.target.Target(
    {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}
))
AVX2 = get_backend("llvm").resolve(tvm.target.Target(
    {"kind": "llvm", "mcpu": "x86-64-v3", "num-cores": 2}
))
TARGETS = {"host": HOST, "avx2": AVX2}


@functools.cache
def scheduled(config, target: str = "host") -> tvm.IRModule:
    """The module as cpu_pipeline has it after ScheduleCPU (before TVM's lowering) for
    TARGETS[target] (scheduling needs no such CPU; running it does)."""
    info = TARGETS[target]
    mod = apply_graph_passes(lower_model(quantized(config), info)).mod
    with info.target:
        passes = [*fusion_passes(), pack_dense_gemms(info.caps), schedule_cpu(info.caps)]
        return tvm.transform.Sequential(passes)(mod)


def prim_funcs(mod: tvm.IRModule) -> dict[str, tirx.PrimFunc]:
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}


def assert_model_exact(seed: int, batch: int, **fields) -> None:
    """A one-model DeiT (model_config("deit_tiny", **fields)) built by cpu_pipeline for this
    host: its logits equal the integer reference's."""
    config = model_config("deit_tiny", **fields)
    model = quantized(config)
    ex = tvm.compile(lower_model(model, HOST).mod, target=HOST.target,
                     relax_pipeline=cpu_pipeline(HOST))
    x = images(config, seed=seed, batch=batch)
    logits = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy()))
    np.testing.assert_array_equal(logits.numpy(), model.forward_integer(x)[0].numpy())
