"""Row-wise integer kernels on CUDA: I-LayerNorm, Shiftmax, ShiftGELU and their fused epilogues.

These PrimFuncs hold, over rows (every axis but the last) of a (..., C) tensor:
- reductions over C (row sum, variance, row max),
- per-row scalar stages (mean, the 10 Newton steps of I-LayerNorm's sqrt, factors),
- elementwise blocks over (..., C) (the op's output, fused requantize/cast/slice).

Thread layout (`RowLayout`):
- rows of C <= WARP_ROW_MAX: one warp per row, `rows_per_block` rows (warps) per thread block.
  threadIdx.x = the 32 lanes across C (coalesced), threadIdx.y = the row in the block,
  blockIdx.x = the group of rows; a ragged last group is predicated per row, so every warp is
  either wholly in or wholly out. Each reduction is a 32-lane all-reduce, which TVM's
  LowerThreadAllreduce turns into __shfl_down_sync steps: no shared memory, no barrier.
- longer rows: one thread block per row (threadIdx.x = up to MAX_THREADS lanes across C); the
  all-reduce is shuffles inside each warp and one shared-memory step across warps.

Reduction dtypes (`reduction_dtypes`). CUDA shuffles move 32- and 64-bit values; for narrower
ones TVM falls back to a volatile shared-memory tree without __syncwarp (unsafe since Volta).
So a max/min into int8/int16 (the row max of int8 logits) is widened to int32, and an int64 sum
is narrowed to int32 where every partial sum provably fits: [C * min, C * max] of the term
within int32 (`sum_bound`), the term bounded by TVM's const_int_bound (loads of the function's
inputs bounded by their dtype). I-LayerNorm's row sum of 16-bit values narrows for C <= 2**16;
Shiftmax's sum of exponentials (each up to 2**31 - 1) and I-LayerNorm's variance (terms read
the row mean, not bounded this way; with 16-bit inputs a single square can exceed 2**31) stay
int64: a 64-bit shuffle is two 32-bit ones. The reduction's result is read back in its original
dtype.

Scalar stages stay stages (dlight's Fallback and GeneralReduction inline spatial blocks into
each other, which for the Newton chain, each step reading the previous one twice, doubles the
expression per step) in registers, computed once per row: the row's warp issues each scalar
instruction once for its 32 lanes (SIMT), with no shared-memory broadcast and no barrier. In
the block-per-row layout every warp of the block computes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.sym import Analyzer
from tvm.target import Target

from ..tir_rewrite import map_func

MAX_THREADS = 256  # threadIdx.x of a block-per-row kernel
WARP = 32
WARP_ROW_MAX = 1024  # rows up to this length get one warp each
ROWS_PER_BLOCK = 4  # warps (rows) per thread block in the warp-per-row layout
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _kinds(sch: s_tir.Schedule, block) -> str:
    """Block iterator kinds as a string, e.g. 'SSR' (data-parallel, reduction)."""
    kind = {tirx.IterVar.DataPar: "S", tirx.IterVar.CommReduce: "R"}
    return "".join(kind.get(iv.iter_type, "O") for iv in sch.get(block).iter_vars)


def threads_for(extent) -> int:
    """threadIdx.x extent of a block-per-row kernel: whole warps, at most MAX_THREADS."""
    if not isinstance(extent, tirx.IntImm | int):
        return MAX_THREADS
    warps = -(-int(extent) // WARP)
    return min(MAX_THREADS, max(1, warps) * WARP)


@dataclass(frozen=True)
class RowLayout:
    """How a row kernel maps onto threads: `rows_per_block` rows of `lanes` threads each."""

    lanes: int  # threadIdx.x: threads across one row
    rows_per_block: int  # threadIdx.y extent; 1 = block per row (no threadIdx.y)

    @property
    def warp_per_row(self) -> bool:
        return self.lanes == WARP and self.rows_per_block > 1


def row_layout(length, rows_per_block: int = ROWS_PER_BLOCK,
               warp_row_max: int = WARP_ROW_MAX) -> RowLayout:
    """A warp per row for rows of a static length <= warp_row_max, else a block per row."""
    if isinstance(length, tirx.IntImm | int) and int(length) <= warp_row_max:
        return RowLayout(WARP, rows_per_block)
    return RowLayout(threads_for(length), 1)


# ---- reduction dtypes -------------------------------------------------------------------
def _combiner(block: s_tir.SBlock):
    """(op, term) of a reduction block `buf = op(buf, term)` (op: Add, Max, Min), else None."""
    store = block.body
    if not isinstance(store, tirx.BufferStore) or block.init is None:
        return None
    value = store.value
    if not isinstance(value, tirx.Add | tirx.Max | tirx.Min):
        return None
    for acc, term in ((value.a, value.b), (value.b, value.a)):
        if isinstance(acc, TensorLoad) and acc.source.same_as(store.buffer):
            return type(value), term
    return None


def _extent(block: s_tir.SBlock) -> int | None:
    """The number of terms a reduction block combines per output (static extents only)."""
    count = 1
    for iv in block.iter_vars:
        if iv.iter_type == tirx.IterVar.CommReduce:
            if not isinstance(iv.dom.extent, tirx.IntImm):
                return None
            count *= int(iv.dom.extent)
    return count


def _fits_int32(low: int, high: int) -> bool:
    return INT32_MIN <= low and high <= INT32_MAX


def sum_bound(term_low: int, term_high: int, terms: int) -> tuple[int, int]:
    """Bounds of every partial sum (from 0) of `terms` values in [term_low, term_high]."""
    return min(0, terms * term_low), max(0, terms * term_high)


def reduction_dtype(block: s_tir.SBlock, analyzer: Analyzer | None = None) -> str | None:
    """The dtype a reduction block should accumulate in for a warp shuffle, or None to keep it.

    max/min into < 32 bits -> int32 (exact: the values are of the narrower dtype); an int64
    sum -> int32 when C * the term's bound fits int32 (module docstring).
    """
    found = _combiner(block)
    if found is None:
        return None
    op, term = found
    dtype = block.body.buffer.dtype
    if not str(dtype).startswith("int") or dtype.bits == 32:
        return None  # int32 shuffles as it is
    init = block.init.value if isinstance(block.init, tirx.BufferStore) else None
    if _identity(op, "int32", init) is None:
        return None  # not a plain sum from 0 / max from the minimum / min from the maximum
    bound = (analyzer or Analyzer()).const_int_bound(term)
    low, high = int(bound.min_value), int(bound.max_value)
    if op is tirx.Add:
        terms = _extent(block)
        if terms is None or dtype.bits < 32:
            return None  # a narrow sum wraps: widening it would change its value
        return "int32" if _fits_int32(*sum_bound(low, high, terms)) else None
    # max/min (at least one term per row): the init, the identity, never decides the result
    return "int32" if dtype.bits < 32 or _fits_int32(low, high) else None


def reduction_dtypes(func: tirx.PrimFunc) -> dict[str, str]:
    """{block name: accumulation dtype} for the reductions of `func` that change dtype."""
    sch = s_tir.Schedule(func)
    analyzer = Analyzer()
    found = {}
    for block_rv in sch.get_child_blocks(get_root_block(sch)):
        block = sch.get(block_rv)
        dtype = reduction_dtype(block, analyzer)
        if dtype is not None:
            found[block.name_hint] = dtype
    return found


def _identity(op, dtype: str, init) -> tirx.IntImm | None:
    """The all-reduce identity of `op` in the new dtype, if the old init was op's identity in
    its own dtype (TVM matches a reducer by its identity: max needs the dtype's minimum)."""
    while isinstance(init, tirx.Cast):
        init = init.value
    if not isinstance(init, tirx.IntImm):
        return None
    bits = int(str(init.ty).removeprefix("int"))
    new_bits = int(dtype.removeprefix("int"))
    value, identity = int(init.value), {
        tirx.Add: (0, 0),
        tirx.Max: (-(2 ** (bits - 1)), -(2 ** (new_bits - 1))),
        tirx.Min: (2 ** (bits - 1) - 1, 2 ** (new_bits - 1) - 1),
    }[op]
    return tirx.IntImm(dtype, identity[1]) if value == identity[0] else None


def _retyped_update(block: s_tir.SBlock, dtype: str) -> s_tir.SBlock | None:
    """After unsafe_set_dtype, `buf = cast(op(cast(buf), term))` -> `buf = op(buf, cast(term))`
    and the init -> op's identity in `dtype` (the form TVM recognizes as a commutative
    reduction), or None if the block is not so. Exact: the terms are unchanged values, and
    the old init was the identity of the old dtype, no greater (max) than any term."""
    store, init = block.body, block.init
    value = store.value
    if not (isinstance(value, tirx.Cast) and isinstance(value.value, tirx.Add | tirx.Max
                                                        | tirx.Min)):
        return None
    if not isinstance(init, tirx.BufferStore):
        return None
    inner = value.value
    identity = _identity(type(inner), dtype, init.value)
    if identity is None:
        return None
    for acc, term in ((inner.a, inner.b), (inner.b, inner.a)):
        if (isinstance(acc, tirx.Cast) and isinstance(acc.value, TensorLoad)
                and acc.value.source.same_as(store.buffer)):
            update = type(inner)(acc.value, tirx.Cast(dtype, term))
            body = tirx.BufferStore(store.buffer, update, list(store.indices))
            init = tirx.BufferStore(init.buffer, identity, list(init.indices))
            return s_tir.SBlock(list(block.iter_vars), list(block.reads), list(block.writes),
                                block.name_hint, body, init, list(block.alloc_buffers),
                                list(block.match_buffers), dict(block.annotations))
    return None


def retype_reductions(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with each reduction of reduction_dtypes accumulating in its new dtype; readers
    cast the result back to the original dtype (exact: the value is unchanged)."""
    dtypes = reduction_dtypes(func)
    if not dtypes:
        return func
    sch = s_tir.Schedule(func)
    for name, dtype in dtypes.items():
        sch.unsafe_set_dtype(sch.get_sblock(name), 0, dtype)
    failed = []

    def post(node):
        if isinstance(node, s_tir.SBlock) and node.name_hint in dtypes:
            rebuilt = _retyped_update(node, dtypes[node.name_hint])
            if rebuilt is None:
                failed.append(node.name_hint)
                return node
            return rebuilt
        return node

    retyped = map_func(sch.mod["main"], post)
    if failed:  # _combiner accepted these blocks, so unsafe_set_dtype changed its output form
        raise RuntimeError(
            f"rowwise: cannot retype the reduction block(s) {', '.join(failed)} to "
            f"{', '.join(dtypes[name] for name in failed)}: the update is not "
            "cast(op(cast(acc), term)) after unsafe_set_dtype; see "
            "schedules/cuda/rowwise.py:_retyped_update"
        )
    return retyped


# ---- the rule ---------------------------------------------------------------------------
class RowReduction(GPUScheduleRule):
    """Row kernels (reductions, row scalars, row outputs): a warp per row where rows are
    short, a thread block per row otherwise (module docstring)."""

    def __init__(self, rows_per_block: int = ROWS_PER_BLOCK,
                 warp_row_max: int = WARP_ROW_MAX) -> None:
        if rows_per_block < 1 or WARP * rows_per_block > 1024:
            raise ValueError(f"RowReduction: rows_per_block must be 1..32, got {rows_per_block}")
        self.rows_per_block = rows_per_block
        self.warp_row_max = warp_row_max

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not _is_row_kernel(s_tir.Schedule(func)):
            return None
        sch = s_tir.Schedule(retype_reductions(func))
        root = get_root_block(sch)
        blocks = sch.get_child_blocks(root)
        full_rank = len(_kinds(sch, blocks[-1]))

        # Elementwise blocks over the whole tensor fold into their consumers (or producer).
        for block in blocks[:-1]:
            kind = _kinds(sch, block)
            if len(kind) == full_rank and "R" not in kind and not _try_inline(sch, block):
                return None

        blocks = sch.get_child_blocks(root)
        last = blocks[-1]
        *row_loops, col = sch.get_loops(last)
        layout = row_layout(sch.get(col).extent, self.rows_per_block, self.warp_row_max)
        row = sch.fuse(*row_loops)
        col_outer, lane = sch.split(col, [None, layout.lanes])
        sch.reorder(lane, col_outer)
        sch.bind(lane, "threadIdx.x")

        for block in reversed(blocks[:-1]):
            is_reduction = "R" in _kinds(sch, block)
            sch.compute_at(block, row, preserve_unit_loops=True)
            if not is_reduction:
                sch.set_scope(block, 0, "local")  # a per-row scalar, in registers
                continue
            # The all-reduce's result: each warp (row) holds its own copy in the warp layout;
            # the warps of a block-per-row kernel share it.
            sch.set_scope(block, 0, "local" if layout.warp_per_row else "shared")
            r_outer = reduce_over_lanes(sch, block, layout.lanes)
            sch.annotate(r_outer, ann_key="pragma_auto_unroll_max_step", ann_val=MAX_THREADS)
            sch.annotate(r_outer, ann_key="pragma_unroll_explicit", ann_val=1)
        # Rows into warps last: a split that does not divide the rows (a symbolic batch) makes
        # the reduction blocks' bindings non-affine, and bind refuses their lanes after it.
        if layout.warp_per_row:
            group, row = sch.split(row, [None, layout.rows_per_block])
            sch.bind(group, "blockIdx.x")
            sch.bind(row, "threadIdx.y")
        else:
            sch.bind(row, "blockIdx.x")
        return sch


def reduce_over_lanes(sch: s_tir.Schedule, block, lanes: int):
    """Fuse `block`'s reduction loops (its innermost) and spread them over `lanes` lanes of
    threadIdx.x, the lane loop outside: an all-reduce after lowering. Returns the serial
    loop left inside each lane."""
    loops = sch.get_loops(block)
    reduce_loops = loops[len(loops) - _kinds(sch, block).count("R"):]
    r_outer, r_lane = sch.split(sch.fuse(*reduce_loops), [None, lanes])
    sch.reorder(r_lane, r_outer)
    sch.bind(r_lane, "threadIdx.x")
    return r_outer


def _is_row_kernel(sch: s_tir.Schedule) -> bool:
    """Reductions over the last axis, row scalars and elementwise blocks, ending in a
    full-rank elementwise block."""
    blocks = sch.get_child_blocks(get_root_block(sch))
    kinds = [_kinds(sch, block) for block in blocks]
    if not blocks or "R" in kinds[-1] or not any("R" in kind for kind in kinds):
        return False
    if any(set(kind) - {"S", "R"} for kind in kinds):
        return False
    row_rank = len(kinds[-1]) - 1
    if row_rank < 1:
        return False
    for kind in kinds[:-1]:
        spatial = kind.rstrip("R")
        if "R" in spatial or len(spatial) not in (row_rank, row_rank + 1):
            return False
        if "R" in kind and len(spatial) != row_rank:
            return False
    return True


def _try_inline(sch: s_tir.Schedule, block) -> bool:
    for inline in (sch.compute_inline, sch.reverse_compute_inline):
        try:
            inline(block)
            return True
        except s_tir.ScheduleError:
            continue
    return False
