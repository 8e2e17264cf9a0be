"""A generic CPU schedule for the fused elementwise and row-wise kernels.

One PrimFunc at a time, on the blocks no dedicated schedule claimed:
1. inline elementwise producers into their consumers (epilogue chains become one loop nest);
   a row-level stage (fewer axes than its consumer) is never inlined into an element-level one
   (that would recompute it per element), and a stage read more than once only at element
   level, so the Newton chain of I-LayerNorm (each step reads the previous one twice) keeps its
   stages instead of growing 2**10-fold;
2. move every row-level stage (layernorm's sums and Newton steps, shiftmax's row max and sum,
   shiftgelu's row max) under the row loop of the output block, so one thread computes a
   whole row while it is in cache; likewise an element-level stage that step 1 kept because a
   row-level stage reads it (shiftmax's exponentials, read by the row sum and the output):
   one row of it at a time (a row-sized buffer; below 1 KiB LLVM keeps it on the stack);
3. fuse the row loops of each remaining loop nest into one parallel loop and vectorize the
   innermost spatial loop when its extent is a constant multiple of the lane count.
Symbolic extents (the batch) only ever sit in the fused parallel loop.
"""

from __future__ import annotations

from collections.abc import Set

from tvm import DataType, tirx
from tvm.ir.prim import expr_deep_equal
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV, ScheduleError
from tvm.tirx.buffer import BufferType

from ivit_tvm.ops.tir_query import count_loads, load_indices

SPATIAL = 0  # IterVar.DataPar
MIN_PARALLEL_ELEMENTS = 2048  # below this many static elements per batch, a thread pool costs more


def _block(sch: Schedule, rv: SBlockRV):
    return sch.get(rv)


def _is_spatial(sch: Schedule, rv: SBlockRV) -> bool:
    return all(int(iv.iter_type) == SPATIAL for iv in _block(sch, rv).iter_vars)


def _written(sch: Schedule, rv: SBlockRV):
    """The buffer (a Var of BufferType) the block writes."""
    return _block(sch, rv).writes[0].source


def _same_shape(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(expr_deep_equal(x, y) for x, y in zip(a, b, strict=True))


def _static_elements(shape) -> int:
    size = 1
    for extent in shape:
        if isinstance(extent, tirx.IntImm):
            size *= int(extent)
    return size


def _root_blocks(sch: Schedule) -> list[SBlockRV]:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _inline_elementwise(sch: Schedule, skip: Set[str], outputs, element_rank: int) -> None:
    """Step 1: compute_inline spatial stages into consumers of the same shape."""
    changed = True
    while changed:
        changed = False
        for rv in _root_blocks(sch):
            block = _block(sch, rv)
            if block.name_hint in skip or len(block.writes) != 1 or not _is_spatial(sch, rv):
                continue
            buffer = _written(sch, rv)
            if any(buffer.same_as(out) for out in outputs):
                continue
            consumers = sch.get_consumers(rv)
            if not consumers:
                continue
            max_reads = 2 if len(buffer.ty.shape) == element_rank else 1
            if not all(
                _same_shape(_written(sch, c).ty.shape, buffer.ty.shape)
                and count_loads(_block(sch, c).body, buffer) <= max_reads
                for c in consumers
            ):
                continue
            try:
                sch.compute_inline(rv)
            except ScheduleError:
                continue
            changed = True
            break


def _row_depth(sch: Schedule, stage: SBlockRV, anchor_shape) -> int:
    """Leading axes a row-level stage shares with the anchor (0: none).

    A stage of shape (B, T) under an anchor (B, T, C) qualifies only if every consumer reads
    it at (its own first two block vars): one row of the stage per row of the anchor. A stage
    read at other indices (a column sum read by every row) would be recomputed per row.
    """
    buffer = _written(sch, stage)
    depth = len(buffer.ty.shape)
    if depth == len(anchor_shape) and _same_shape(buffer.ty.shape, anchor_shape):
        depth -= 1  # an element-level stage step 1 kept (read by a row-level stage too): by rows
    if depth >= len(anchor_shape) or not _same_shape(buffer.ty.shape[:depth],
                                                      anchor_shape[:depth]):
        return 0
    for consumer in sch.get_consumers(stage):
        block = _block(sch, consumer)
        row_vars = [iv.var for iv in block.iter_vars[:depth]]
        indices = load_indices(block.body, buffer)
        for index in indices:
            if len(row_vars) < depth or not all(
                expr_deep_equal(i, v) for i, v in zip(index[:depth], row_vars, strict=True)
            ):
                return 0
    return depth


def _parallel_vectorize(sch: Schedule, rv: SBlockRV, outer: int, lanes: int) -> None:
    """Fuse the first `outer` loops into a parallel loop; vectorize the innermost if spatial."""
    loops = sch.get_loops(rv)
    shape = _written(sch, rv).ty.shape
    if outer > 0 and _static_elements(shape) >= MIN_PARALLEL_ELEMENTS:
        fused = sch.fuse(*loops[:outer]) if outer > 1 else loops[0]
        sch.parallel(fused)
    if not _is_spatial(sch, rv) or len(loops) <= outer:
        return
    inner = sch.get_loops(rv)[-1]
    extent = sch.get(inner).extent
    if not isinstance(extent, tirx.IntImm) or int(extent) % lanes:
        return  # LLVM's loop vectorizer takes these (tail included); TVM's needs no tail
    if int(extent) > lanes:
        inner = sch.split(inner, [None, lanes])[-1]
    sch.vectorize(inner)


def vector_lanes(sch: Schedule, rv: SBlockRV, vector_bytes: int) -> int:
    """Vector lanes for a block: the register width over its widest buffer element."""
    block = _block(sch, rv)
    widest = max(
        (DataType(str(r.source.ty.dtype)).bits for r in list(block.reads) + list(block.writes)),
        default=32,
    )
    return max(4, vector_bytes * 8 // max(widest, 8))


def schedule_generic(sch: Schedule, vector_bytes: int, skip: Set[str] = frozenset()) -> None:
    """Steps 1-3 of the module docstring on every root block not named in `skip` (the blocks
    a dedicated schedule rule owns)."""
    func = sch.mod["main"]
    outputs = [p for p in func.params if isinstance(p.ty, BufferType)]  # in- and outputs
    element_rank = max(len(b.ty.shape) for b in outputs)
    _inline_elementwise(sch, skip, outputs, element_rank)

    blocks = [rv for rv in _root_blocks(sch) if _block(sch, rv).name_hint not in skip]
    anchors = [
        _block(sch, rv).name_hint
        for rv in blocks
        if any(_written(sch, rv).same_as(b) for b in outputs)
    ]
    moved: set[str] = set()
    depth = 0
    if len(anchors) == 1:
        anchor = sch.get_sblock(anchors[0])
        anchor_shape = _written(sch, anchor).ty.shape
        for rv in reversed(blocks):
            name = _block(sch, rv).name_hint
            d = _row_depth(sch, rv, anchor_shape)
            if name == anchors[0] or d == 0:
                continue
            try:
                sch.compute_at(rv, sch.get_loops(anchor)[d - 1], preserve_unit_loops=False)
            except ScheduleError:
                continue
            moved.add(name)
            depth = max(depth, d)
    for rv in _root_blocks(sch):
        name = _block(sch, rv).name_hint
        if name in skip or name in moved:
            continue
        loops = sch.get_loops(rv)
        if name in anchors and depth:
            outer = depth
        else:
            outer = _spatial_prefix(sch, rv, len(loops))
        _parallel_vectorize(sch, rv, outer, vector_lanes(sch, rv, vector_bytes))


def _spatial_prefix(sch: Schedule, rv: SBlockRV, n_loops: int) -> int:
    """Loops to parallelize: all leading spatial ones, but the innermost of an all-spatial
    nest stays serial for vectorization."""
    block = _block(sch, rv)
    spatial = [int(iv.iter_type) == SPATIAL for iv in block.iter_vars]
    prefix = 0
    for is_spatial in spatial:
        if not is_spatial:
            break
        prefix += 1
    prefix = min(prefix, n_loops)
    if prefix == n_loops and n_loops > 1:
        prefix -= 1
    return prefix
