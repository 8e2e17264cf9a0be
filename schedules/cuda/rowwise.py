"""Row-wise integer kernels on CUDA: I-LayerNorm, Shiftmax, ShiftGELU and their fused epilogues.

These PrimFuncs hold, over rows (every axis but the last) of a (..., C) tensor:
- reductions over C (row sum, variance, row max),
- per-row scalar stages (mean, the 10 Newton steps of I-LayerNorm's sqrt, factors),
- elementwise blocks over (..., C) (the op's output, fused requantize/cast/slice).

One thread block handles one row: reductions bind C to threadIdx.x (a cross-thread all-reduce,
result in shared memory), scalar stages run redundantly in every thread (in registers), and
the last elementwise block writes the row, threadIdx.x across C. The scalar stages are kept as
stages: dlight's Fallback and GeneralReduction inline spatial blocks into each other, which
for the Newton chain (each step reads the previous one twice) doubles the expression per step.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.target import Target

MAX_THREADS = 256
WARP = 32


def _kinds(sch: s_tir.Schedule, block) -> str:
    """Block iterator kinds as a string, e.g. 'SSR' (data-parallel, reduction)."""
    kind = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kind.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def threads_for(extent) -> int:
    """threadIdx.x extent for a row of `extent` elements: whole warps, at most MAX_THREADS."""
    if not isinstance(extent, tirx.IntImm | int):
        return MAX_THREADS
    warps = -(-int(extent) // WARP)
    return min(MAX_THREADS, max(1, warps) * WARP)


class RowReduction(GPUScheduleRule):
    """One thread block per row for functions of row reductions, row scalars and row outputs."""

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        root = get_root_block(sch)
        blocks = sch.get_child_blocks(root)
        kinds = [_kinds(sch, block) for block in blocks]
        if not blocks or "R" in kinds[-1] or not any("R" in kind for kind in kinds):
            return None
        if any(set(kind) - {"S", "R"} for kind in kinds):
            return None
        full_rank = len(kinds[-1])
        row_rank = full_rank - 1
        if row_rank < 1:
            return None
        for kind in kinds[:-1]:
            spatial = kind.rstrip("R")
            if "R" in spatial or len(spatial) not in (row_rank, full_rank):
                return None
            if "R" in kind and len(spatial) != row_rank:
                return None

        # Elementwise blocks over the whole tensor fold into their consumers (or producer).
        for block, kind in zip(blocks[:-1], kinds[:-1], strict=True):
            if len(kind) == full_rank and "R" not in kind:
                if not _try_inline(sch, block):
                    return None

        blocks = sch.get_child_blocks(root)
        last = blocks[-1]
        *row_loops, col = sch.get_loops(last)
        threads = threads_for(sch.get(col).extent)
        row = sch.fuse(*row_loops)
        sch.bind(row, "blockIdx.x")
        col_outer, tx = sch.split(col, [None, threads])
        sch.reorder(tx, col_outer)
        sch.bind(tx, "threadIdx.x")

        for block in reversed(blocks[:-1]):
            is_reduction = "R" in _kinds(sch, block)
            sch.compute_at(block, row, preserve_unit_loops=True)
            if not is_reduction:
                sch.set_scope(block, 0, "local")  # a per-row scalar, one copy per thread
                continue
            sch.set_scope(block, 0, "shared")  # the all-reduce's result, read by all threads
            loops = sch.get_loops(block)
            reduce_loops = loops[len(loops) - _kinds(sch, block).count("R"):]
            r_outer, r_tx = sch.split(sch.fuse(*reduce_loops), [None, threads])
            sch.reorder(r_tx, r_outer)
            sch.bind(r_tx, "threadIdx.x")
            sch.annotate(r_outer, ann_key="pragma_auto_unroll_max_step", ann_val=MAX_THREADS)
            sch.annotate(r_outer, ann_key="pragma_unroll_explicit", ann_val=1)
        return sch


def _try_inline(sch: s_tir.Schedule, block) -> bool:
    for inline in (sch.compute_inline, sch.reverse_compute_inline):
        try:
            inline(block)
            return True
        except s_tir.ScheduleError:
            continue
    return False
