"""CPU twin of a CUDA schedule: the same scheduled TIR, built for llvm, to check it bit for bit.

A GPU schedule's indexing (block and warp tiles, shared-memory staging, ldmatrix fragment
layouts, padded rows, the predicated epilogue store) can be wrong in ways no CPU build of the
unscheduled function would show. The twin keeps all of it and changes only what a CPU cannot
run:

- every thread-bound loop (blockIdx.*, threadIdx.*, vthread) becomes a serial loop over its
  own variable. In block form each stage (shared fetch, fragment load, mma, store) is its own
  loop nest, so running the threads one after another per stage is what the barriers between
  stages guarantee on the GPU;
- shared / shared.dyn / warp / local buffers become plain (global) buffers, with the same
  shapes, so fragment layouts keep their (lane, element) indexing;
- software-pipeline and async-copy annotations are dropped and unrolled loops stay loops
  (they change timing, not values; unrolled, LLVM takes 10x longer to build the twin);
- tensor intrinsics are not applied: the schedule runs with tensorize=False (mma.schedule_mma)
  and each blockized 16x16x32 tile stays as the loop nest `tensorize` would have compared
  against the intrinsic's description (mma_intrin: tensorize requires structural equality,
  so the description is exactly what the intrinsic is trusted to compute).

`build_twin_module` does this to every PrimFunc of a whole model as the CUDA pipeline schedules
it (GEMMs untensorized) and builds the Relax module for the CPU: the model's CUDA kernels run
end to end on the CPU, to be compared with the PyTorch integer reference.

What the twin cannot see: the intrinsics' implementations themselves (ldmatrix and mma.sync
operand order, which the descriptions encode) and races between threads. Those need a GPU
(tests marked gpu).
"""

from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from ..tir_rewrite import map_func, map_stmt
from .pipeline import scheduling_passes

DROPPED_ANNOTATIONS = ("software_pipeline_stage", "software_pipeline_order",
                       "software_pipeline_async_stages", "pragma_auto_unroll_max_step",
                       "pragma_unroll_explicit")


SERIALIZED = (tirx.ForKind.THREAD_BINDING, tirx.ForKind.UNROLLED)


def _serial_loops(node):
    if isinstance(node, tirx.For) and (node.kind in SERIALIZED or node.annotations):
        annotations = {key: value for key, value in node.annotations.items()
                       if key not in DROPPED_ANNOTATIONS}
        kind = tirx.ForKind.SERIAL if node.kind in SERIALIZED else node.kind
        return tirx.For(node.loop_var, node.min, node.extent, kind, node.body, None, annotations)
    return node


def _writes_to_gpu_memory(func: tirx.PrimFunc) -> list[tuple[str, int]]:
    """(block name, write index) of every block writing a non-global buffer."""
    found = []

    def visit(node):
        if isinstance(node, s_tir.SBlock):
            for index, region in enumerate(node.writes):
                if region.source.scope() not in ("global", ""):
                    found.append((node.name_hint, index))
        return node

    map_stmt(func.body, visit)
    return found


def cpu_twin(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The llvm-buildable twin of a scheduled, untensorized CUDA PrimFunc (see module doc)."""
    sch = s_tir.Schedule(func)
    for block_name, index in _writes_to_gpu_memory(func):
        block = sch.get_sblock(block_name)
        if sch.get(block).writes[index].source.scope() not in ("global", ""):
            sch.set_scope(block, index, "global")
    twin = map_func(sch.mod["main"], _serial_loops)
    return twin.with_attr("tirx.is_scheduled", True)


def build_twin(func: tirx.PrimFunc, name: str = "twin") -> tvm.runtime.Module:
    """cpu_twin(func) compiled for this host's CPU (llvm), callable as module[name]."""
    twin = cpu_twin(func).with_attr("global_symbol", name)
    return tvm.compile(tvm.IRModule({name: twin}), target=tvm.target.Target({"kind": "llvm"}))


@tvm.transform.module_pass(opt_level=0, name="CPUTwins")
def cpu_twins(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every PrimFunc of a CUDA-scheduled module replaced by its cpu_twin."""
    updates = {gv: cpu_twin(func) for gv, func in mod.functions_items()
               if isinstance(func, tirx.PrimFunc)}
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def build_twin_module(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    """The Relax module `mod` scheduled as the CUDA pipeline schedules it for `target` (the
    GEMMs untensorized), each kernel turned into its CPU twin, built for this host's CPU:
    run it with relax.VirtualMachine(executable, tvm.cpu())."""
    host = tvm.target.Target({"kind": "llvm"})

    @tvm.transform.module_pass(opt_level=0, name="CUDATwinPipeline")
    def pipeline(module: tvm.IRModule, _ctx) -> tvm.IRModule:
        with target:
            module = tvm.transform.Sequential(scheduling_passes(tensorize=False))(module)
        with host:
            return tvm.transform.Sequential([
                cpu_twins,
                *cpu_generic.dataflow_lower_passes(host),
                *cpu_generic.finalize_passes(host),
            ])(module)

    return tvm.compile(mod, target=host, relax_pipeline=pipeline)
