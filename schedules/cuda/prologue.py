"""Row prologue of a tensor-core GEMM: a row op computed while fetching the GEMM's A operand.

FoldAttentionShiftmax (schedules/fold_layout.py) puts Shiftmax in the same PrimFunc as the
probs @ V matmul that reads its probabilities, so that Shiftmax is no kernel of its own and
its (..., N, N) int16 output never reaches global memory. Such a PrimFunc holds, before the
GEMM block:
- row statistics: reductions over a row (Shiftmax's row max and row sum) and per-row scalar
  stages reading them (its factor (2**31-1) // sum);
- elementwise blocks over the whole operand (the exponential, the probability, its high or
  low byte).

Per thread block of the GEMM (mma.py's block tile: `block_m` rows of A, all of K):

    statistics of the block's rows -> shared memory, a warp per row, 32 lanes along the row
        (each reduction an all-reduce of shuffles, rowwise.py's warp-per-row layout)
    k tiles: A's fetch computes each element from the operand's input and the statistics
        (the elementwise blocks inlined into it), B's fetch as before

The statistics of a block's rows are computed once per thread block, i.e. once per N tile
of the GEMM: probs @ V has N = the head dimension, and at 64 (DeiT) mma_tiles' 32x64 tile
covers it, so Shiftmax's reductions run once per row in each of the two byte GEMMs (twice in
all, against once in a Shiftmax kernel) and its elementwise work (a table lookup and a
multiply per element) once in each; in exchange the (..., N, N) int16 probabilities are
neither written nor read back (2 + 2 x 2 bytes per element) and a launch per block is gone.
Rows past the operand's end (the padded last M tile) are left out by compute_at's predicate
(`row < tokens`): no statistic reads past the logits.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block

from .rowwise import WARP, reduce_over_lanes


def statistic_blocks(sch: s_tir.Schedule, main) -> list:
    """The blocks before `main` that compute row statistics, in program order: reductions
    other than `main`, and spatial blocks reading a statistic with a result of a
    statistic's rank (per-row scalars)."""
    blocks = sch.get_child_blocks(get_root_block(sch))
    stats, stat_buffers = [], {}
    for block in blocks:
        stmt = sch.get(block)
        if stmt.same_as(sch.get(main)):
            break
        out = stmt.writes[0].source if stmt.writes else None
        if out is None:
            continue
        if any(iv.iter_type == tirx.IterVar.CommReduce for iv in stmt.iter_vars):
            stats.append(block)
            stat_buffers[out] = len(out.shape)
            continue
        read_ranks = [stat_buffers[r.source] for r in stmt.reads if r.source in stat_buffers]
        if read_ranks and len(out.shape) in read_ranks:
            stats.append(block)
            stat_buffers[out] = len(out.shape)
    return stats


def inline_elementwise(sch: s_tir.Schedule, fetch, stats: list) -> None:
    """Inline every producer of `fetch` (transitively) except the statistics: the operand's
    elementwise blocks become part of the fetch (and of the statistics that read them)."""
    keep = {sch.get(block).name_hint for block in stats}
    while True:
        for producer in _producers(sch, fetch):
            if sch.get(producer).name_hint in keep:
                continue
            try:
                sch.compute_inline(producer)
                break  # the producer list changed: walk it again
            except s_tir.ScheduleError:
                continue
        else:
            return


def _producers(sch: s_tir.Schedule, block) -> list:
    found = []
    for producer in sch.get_producers(block):
        found.append(producer)
        found.extend(_producers(sch, producer))
    return found


def schedule_statistics(sch: s_tir.Schedule, stats: list, loop, warps: int) -> None:
    """Compute the statistics under `loop` (the thread block's), for the block's rows, into
    shared memory: rows over the `warps` warps, a row's reduction over the 32 lanes."""
    for block in reversed(stats):  # consumers first: each lands before what reads it
        sch.compute_at(block, loop, preserve_unit_loops=True)
    for block in stats:
        reduces = sum(1 for iv in sch.get(block).iter_vars
                      if iv.iter_type == tirx.IterVar.CommReduce)
        loops = sch.get_loops(block)
        inner = loops[loops.index(_after(sch, loops, loop)):len(loops) - reduces]
        row = sch.fuse(*inner) if len(inner) > 1 else inner[0]
        sch.set_scope(block, 0, "shared")
        if reduces:
            _, row_warp = sch.split(row, [None, warps])
            reduce_over_lanes(sch, block, WARP)  # lanes inside the row's warp loop
        else:
            _, row_warp, lane = sch.split(row, [None, warps, WARP])
            sch.bind(lane, "threadIdx.x")
        sch.bind(row_warp, "threadIdx.y")


def _after(sch: s_tir.Schedule, loops: list, loop):
    """The loop right under `loop` in `loops` (the block's loop nest)."""
    target = sch.get(loop)
    for index, candidate in enumerate(loops):
        if sch.get(candidate).same_as(target):
            return loops[index + 1]
    raise ValueError("schedule_statistics: the block is not under the thread block's loop")
