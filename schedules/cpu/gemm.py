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
# zmm for accumulators (enough independent vpdpbusd chains), AVX2 6 x 2 of 16 ymm, SSE 3 x 4.
# (AVX2 vpmaddwd on Zen 1, DeiT-S dense shapes: 2x3, 3x2, 4x1, 6x1 and 2x2 blocks within
# noise of each other, ~18 GOPS per core: the multiplier port is the limit, not registers.)
ACCUMULATORS = {64: 24, 32: 6, 16: 3}
MAX_ROWS = 16


@dataclass(frozen=True)
class Tile:
    """A register block: `rows` x `cols` vectors of 16 accumulators, K groups of `group`."""

    rows: int
    cols: int
    group: int


def choose_tile(n_tiles: int, group: int, vector_bytes: int = 64) -> Tile:
    """The widest register block whose columns divide the N tiles (no N tail).

    A "vector" of 16 int32 lanes is one zmm register, or 2 ymm / 4 xmm without AVX-512, so
    the accumulator budget (registers less the operands') shrinks with the vector width.
    """
    budget = ACCUMULATORS.get(vector_bytes, ACCUMULATORS[16])
    cols = next(c for c in (3, 2, 1) if n_tiles % c == 0 and c <= budget)
    return Tile(rows=min(MAX_ROWS, budget // cols), cols=cols, group=group)


def tile_gemm(
    sch: Schedule,
    block: SBlockRV,
    tile: Tile,
    intrin: str | None,
    k_block: int | None = None,
    prologue: tuple[SBlockRV, ...] = (),
) -> list[SBlockRV]:
    """Tile the GEMM block (see the module).

    The m extent must be a multiple of tile.rows and n of 16 * tile.cols (pad in the compute
    definition). `prologue` blocks (operand packing) move under the parallel loop, so each
    thread packs the operands it then multiplies (a per-iteration workspace: worth it per
    attention head, not per dense row block); returns those that could not move (TVM's
    region analysis can refuse), for the caller to schedule on their own.
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
