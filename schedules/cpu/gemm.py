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

from dataclasses import dataclass

from tvm.s_tir import Schedule
from tvm.s_tir.schedule import SBlockRV, ScheduleError

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


def tile_gemm(
    sch: Schedule,
    block: SBlockRV,
    tile: Tile,
    intrin: str | None,
    k_block: int | None = None,
    prologue: tuple[SBlockRV, ...] = (),
    epilogue: SBlockRV | None = None,
) -> list[SBlockRV]:
    """Tile the GEMM block (see the module).

    The m extent must be a multiple of tile.rows and n of 16 * tile.cols (pad in the compute
    definition). `prologue` blocks (operand packing) move under the parallel loop, so each
    thread packs the operands it then multiplies (a per-iteration workspace: worth it per
    attention head, not per dense row block). An `epilogue` block reading the GEMM's output at
    its own (m, n) (dense.flat_epilogue) moves under the row-block loop, after the GEMM: each
    block of rows is requantized while its accumulators are still in cache. Returns the
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
    if epilogue is not None:
        try:  # before decompose_reduction and tensorize: TVM refuses it after them
            sch.reverse_compute_at(epilogue, mo)
        except ScheduleError:
            unmoved.append(epilogue)
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
