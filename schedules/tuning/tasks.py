"""Tuning tasks: the GEMM kernels of a model, as the CPU pipeline hands them to the schedules.

    tasks = extract_tasks(mod, info)      # mod: the integer Relax module of a fixed batch
    [t.name for t in tasks]               # ["dense 72x192x64", "matmul 4x65x65x16", ...]

`extract_tasks` runs the CPU pipeline (no code generation) with a collecting
`tuned_schedules` scope, so a task is exactly the PrimFunc that ApplyTunedSchedules later
looks up: a fused kernel after weight packing, its epilogue (bias, requantize) included.
Kernels of the same structure (the layers of a ViT) are one task, weighted by their count.
Only kernels of static shape are tasks: compile the model with a fixed batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import tirx

from ivit_tvm.ops import names
from ivit_tvm.ops.tir_query import blocks

from ..targets import TargetInfo
from .apply import tuned_schedules
from .database import workload

GEMM_BLOCKS = {names.DENSE_ACC_BLOCK: "dense", names.BATCH_MATMUL_ACC_BLOCK: "matmul"}
KINDS = tuple(GEMM_BLOCKS.values())


@dataclass
class TuningTask:
    """One kernel to tune: `name` says its kind and iteration extents (dense: rows x
    out-channels x reduction, rows padded; matmul: batch*heads x rows x cols x reduction)."""

    name: str
    kind: str  # "dense" or "matmul"
    func: tirx.PrimFunc  # as ApplyTunedSchedules sees it
    primfuncs: list[str]  # the model's PrimFuncs with this structure

    @property
    def weight(self) -> int:
        return len(self.primfuncs)

    @property
    def workload(self) -> tvm.IRModule:
        return workload(self.func)


def gemm_kind(func: tirx.PrimFunc) -> tuple[str, list[int]] | None:
    """("dense" | "matmul", iteration extents of the GEMM block), or None for other kernels."""
    for block in blocks(func):
        kind = GEMM_BLOCKS.get(block.name_hint)
        if kind is not None:
            extents = [iv.dom.extent for iv in block.iter_vars]
            if all(isinstance(e, tirx.IntImm) for e in extents):
                return kind, [int(e) for e in extents]
    return None


def extract_tasks(mod: tvm.IRModule, info: TargetInfo,
                  kinds: tuple[str, ...] = KINDS) -> list[TuningTask]:
    """The GEMM tasks (of `kinds`) of an integer Relax module (see module), first seen first."""
    from ..cpu.pipeline import cpu_pipeline

    with tuned_schedules(collect=True) as scope:
        cpu_pipeline(info)(mod)
    tasks: list[TuningTask] = []
    for name, func in scope.seen:
        found = gemm_kind(func)
        if found is None or found[0] not in kinds:
            continue
        kind, extents = found
        same = next((t for t in tasks if tvm_ffi.structural_equal(t.workload, workload(func))),
                    None)
        if same is not None:
            same.primfuncs.append(name)
            continue
        label = f"{kind} {'x'.join(map(str, extents))}"
        clashes = sum(t.name.split("#")[0] == label for t in tasks)
        tasks.append(TuningTask(f"{label}#{clashes + 1}" if clashes else label, kind, func,
                                [name]))
    return tasks


def select_tasks(tasks: list[TuningTask], only: tuple[str, ...]) -> list[TuningTask]:
    """The tasks named by one of `only`, or whose name contains one that names no task (all
    when empty); ValueError listing the names when nothing matches."""
    if not only:
        return tasks
    names = {t.name for t in tasks}
    chosen = [t for t in tasks
              if any(word == t.name or (word not in names and word in t.name) for word in only)]
    if not chosen:
        raise ValueError(f"--only {' '.join(only)} matches no kernel; the kernels are: "
                         + ", ".join(t.name for t in tasks))
    return chosen


__all__ = ["KINDS", "TuningTask", "extract_tasks", "gemm_kind", "select_tasks"]
