"""Register-blocked GEMM tiling shared by the dense and the attention matmuls.

A GEMM block here reads its second operand packed as [N/16, K/g, 16, g] (g = 4 int8 or 2
int16 values per int32 lane) and loops (*batch, m, n, k). The tile:

    parallel outer (batch axes fused, or row blocks when there are none)
      for mo, no, ko:                      (ko: K blocks, keeps the weight panel cached)
        for kb:                            (groups of g along K)
          for mi in unroll(rows), nb in unroll(cols):
            acc[mi, nb*16:+16] += A[mi, kb*g:+g] . B[no*cols+nb, kb]   (one tensor intrinsic)

so rows x cols vectors of 16 int32 accumulators stay in registers across kb (LLVM keeps them
there: the tensorized body holds no temporaries). The intrinsic is the ISA's (isa.GemmPath):
one vpdpbusd/vpdpwssd on zmm, two on ymm (AVX-VNNI), two vpmaddwd + vpaddd (AVX2); without one
the 16-lane step is a plain vectorized loop, unrolled over g.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tvm
from tvm import tirx
from tvm.ir.prim import expr_deep_equal
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV, ScheduleError

from ivit_tvm.ops.tir_query import load_indices

from .generic import vector_lanes
from .vnni import LANES

# rows x cols vectors of 16 accumulators per vector width in bytes: AVX-512 keeps 24 of its 32
# zmm for accumulators (enough independent vpdpbusd chains), AVX2 6 of 16 lanes, SSE 3.
ACCUMULATORS = {64: 24, 32: 6, 16: 3}
# The register file of each vector width with a register model (zmm: 32, ymm: 16): the block's
# accumulators, the `cols` weight vectors every row reuses and the one broadcast operand must
# all fit, or LLVM spills accumulators to the stack inside the K loop. AVX2 on Zen 3, DeiT-S
# batch 8 dense GEMMs, 2 threads (GOPS, interleaved): 2x3 (19 ymm, spills) 121-150, 3x2 (17)
# 140-168, 2x2 126-164, 4x1 152-170, 5x1 178-194, 6x1 (15 ymm) 169-203, 7x1 (17) 154-164,
# 8x1 (19) 103-107. (On Zen 1's 128-bit units every block was multiplier-bound alike.)
REGISTERS = {64: 32, 32: 16}
MAX_ROWS = 16


@dataclass(frozen=True)
class Tile:
    """A register block: `rows` x `cols` vectors of 16 accumulators, K groups of `group`."""

    rows: int
    cols: int
    group: int


def choose_tile(n_tiles: int, group: int, vector_bytes: int = 64) -> Tile:
    """The register block whose columns divide the N tiles (no N tail): the widest within the
    accumulator budget; where the register file is modelled (REGISTERS), the one with the most
    accumulators that fits it (of equal ones, the widest).

    A "vector" of 16 int32 lanes is one zmm register, or 2 ymm / 4 xmm without AVX-512, so
    the accumulator budget (registers less the operands') shrinks with the vector width.
    """
    budget = ACCUMULATORS.get(vector_bytes, ACCUMULATORS[16])
    per_vector = max(1, 64 // vector_bytes)  # registers per 16-lane vector
    tiles = []
    for cols in (3, 2, 1):
        if n_tiles % cols or cols > budget:
            continue
        rows = min(MAX_ROWS, budget // cols)
        if vector_bytes in REGISTERS:  # accumulators + weights + broadcast <= registers
            rows = min(rows, (REGISTERS[vector_bytes] - 1) // (cols * per_vector) - 1)
        if rows >= 1:
            tiles.append(Tile(rows=rows, cols=cols, group=group))
    if vector_bytes not in REGISTERS:
        return tiles[0]
    return max(tiles, key=lambda tile: tile.rows * tile.cols)  # max keeps the first of ties


def blocks_after(sch: Schedule, name: str) -> list[str]:
    """The names of the root blocks after block `name`, in program order."""
    names = [sch.get(rv).name_hint for rv in sch.get_child_blocks(sch.get_sblock("root"))]
    return names[names.index(name) + 1 :]


def _covers_acc(block, index: list, acc_buffer) -> bool:
    """Whether each accumulator axis the epilogue reads through arithmetic (attention's head
    merge: n // d, n % d) spans exactly that axis's extent. Where it spans less (head_dim 24 in
    columns padded to 32), reverse_compute_at in TVM 0.27 derives a wrong loop nest from the
    padded region (8 of 24 columns, two heads); an axis read at a bare iterator (the padded
    rows), or the dense's flattened rows (symbolic, b * T + t, whose inverse TVM simplifies),
    is fine: its padding becomes a predicate."""
    analyzer = tvm.sym.Analyzer()
    iter_vars = [iv.var for iv in block.iter_vars]
    for iv in block.iter_vars:
        analyzer.bind(iv.var, iv.dom)
    for expr, extent in zip(index, acc_buffer.ty.shape, strict=True):
        expr = analyzer.simplify(expr)
        if any(expr.same_as(v) for v in iter_vars) or not isinstance(extent, tirx.IntImm):
            continue  # a symbolic extent: the dense's flattened rows, b * T + t (exact inverse)
        bound = analyzer.const_int_bound(expr)
        if int(bound.min_value) != 0 or int(bound.max_value) + 1 != int(extent):
            return False
    return True


def epilogue_like_acc(sch: Schedule, acc: SBlockRV, after: list[str]) -> SBlockRV | None:
    """The blocks `after` the GEMM (its epilogue: corr, bias, requantize, residual add, the
    head merge; root blocks in program order) inlined into the last, whose iteration is then
    laid out as the accumulator index it reads (the dense's (batch, tokens, n) becomes the
    flat row (b * T + t, n); attention's merged (b, t, h * d + c) becomes (b, h, t, c)), so
    that tile_gemm can compute it per row block while the accumulators are in cache. None
    where the epilogue is not one injective chain reading the accumulator at one index (TVM's
    region analysis fails inside reverse_compute_at on two: q @ k^T's correction row is copied
    out by a stage of its own, matmul.QK_COLSUM); the generic schedule takes what is left."""
    if not after:
        return None
    *chain, last = after
    acc_buffer = sch.get(acc).writes[0].source
    try:
        for name in chain:
            sch.compute_inline(sch.get_sblock(name))
        block_rv = sch.get_sblock(last)
        block = sch.get(block_rv)
        reads = load_indices(block.body, acc_buffer)
        if not reads:
            return None
        index, iter_vars = list(reads[0]), [iv.var for iv in block.iter_vars]
        one_index = all(len(other) == len(index) and all(
            expr_deep_equal(a, b) for a, b in zip(other, index, strict=True)) for other in reads)
        identity = len(index) == len(iter_vars) and all(
            expr_deep_equal(i, v) for i, v in zip(index, iter_vars, strict=True))
        if not one_index:  # TVM 0.27 cannot move it (reverse_compute_at fails on its region)
            return None
        if not _covers_acc(block, index, acc_buffer):
            return None
        if not identity:
            sch.transform_block_layout(block_rv, tirx.IndexMap(iter_vars, index, None))
    except ScheduleError:
        return None
    return block_rv


def tile_gemm(
    sch: Schedule,
    block: SBlockRV,
    tile: Tile,
    intrin: str | None,
    k_block: int | None = None,
    prologue: tuple[SBlockRV, ...] = (),
    epilogue: Sequence[SBlockRV] = (),
) -> list[SBlockRV]:
    """Tile the GEMM block (see the module).

    The m extent must be a multiple of tile.rows and n of 16 * tile.cols (pad in the compute
    definition). `prologue` blocks (operand packing) move under the parallel loop, so each
    thread packs the operands it then multiplies (a per-iteration workspace: worth it per
    attention head, not per dense row block). The `epilogue` blocks reading the GEMM's output
    (epilogue_like_acc) move under the parallel loop too, in order, after the GEMM: each dense row
    block, or attention head, is requantized while its accumulators are still in cache.
    TVM moves a consumer only where all its producers are, so the epilogue may read nothing
    the prologue computes (attention's correction term is a row of the GEMM, copied out by an
    earlier epilogue block). Returns the
    blocks that could not move (TVM's region analysis can refuse), for the caller to schedule
    on their own.
    """
    *batch, m, n, k = sch.get_loops(block)
    k_extent = int(sch.get(k).extent)
    k_outer = k_extent // k_block if k_block and k_extent % k_block == 0 else 1
    mo, mi = sch.split(m, [None, tile.rows])
    no, nb, ni = sch.split(n, [None, tile.cols, LANES])
    ko, kb, ki = sch.split(k, [k_outer, None, tile.group])
    if intrin:
        sch.reorder(mo, no, ko, kb, mi, nb, ni, ki)
    else:
        sch.reorder(mo, no, ko, kb, mi, nb, ki, ni)
    outer = sch.fuse(*batch) if len(batch) > 1 else (batch[0] if batch else mo)
    unmoved = []
    for stage in prologue:
        try:
            sch.compute_at(stage, outer)
        except ScheduleError:
            unmoved.append(stage)
    for stage in epilogue:
        try:  # before decompose_reduction and tensorize: TVM refuses it after them
            sch.reverse_compute_at(stage, outer)
        except ScheduleError:
            unmoved.append(stage)
    sch.parallel(outer)
    sch.unroll(mi)
    sch.unroll(nb)
    if not intrin:
        sch.unroll(ki)
        sch.vectorize(ni)
    init = sch.decompose_reduction(block, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    if intrin:
        sch.tensorize(ni, intrin)
    return unmoved


def vectorize_epilogue(sch: Schedule, epilogue: SBlockRV | None, unmoved: list[SBlockRV],
                       vector_bytes: int) -> set[str]:
    """Vectorize the innermost loop of an epilogue tile_gemm moved (where its extent is a
    multiple of the lanes; else LLVM's loop vectorizer takes it, tail included); returns its
    name to claim, or nothing when it did not move (the generic schedule takes it)."""
    if epilogue is None or epilogue in unmoved:
        return set()
    columns = sch.get_loops(epilogue)[-1]
    lanes, extent = vector_lanes(sch, epilogue, vector_bytes), sch.get(columns).extent
    if isinstance(extent, tirx.IntImm) and int(extent) % lanes == 0:
        sch.vectorize(sch.split(columns, [None, lanes])[-1])
    return {sch.get(epilogue).name_hint}
