"""Tensor-core int8 GEMM for sm_80+: mma.sync m16n8k32 s8, ldmatrix, cp.async, fused epilogue.

The GEMM is normalised like gemm.py's dp4a rule, C[S, I, J] += A[S, I, K] * B[S, J, K], and
padded to whole block tiles: M = batch x tokens is ragged, and in attention's batched matmuls
so are N = tokens (q @ k^T) and K = tokens (probs @ V, zero-filled); dense layers need whole N
and K tiles (mma_tiles.choose_tile). Then, per block tile (mma_tiles.MmaTile):

    blockIdx.x: S x M tiles, blockIdx.y: N tiles, threadIdx.y: warps, threadIdx.x: lanes
    for each k tile (software pipeline of `stages`, global -> shared by Fetch: 16-byte cp.async
                     where rows allow, else an element a lane):
        for each 32-deep k step: ldmatrix A and B 16x32 fragments to registers ("warp")
            for each 16x16 tile of the warp's C: mma.sync m16n8k32 twice
    epilogue: C fragments -> requantize (inlined consumers) -> global, only rows < M and
              columns < N stored

`schedule_mma(..., tensorize=False)` stops before the four `tensorize` calls: what remains is
the same TIR with each intrinsic's description in its place (tensorize checks structural
equality with the description), which twin.py builds for the CPU to check the indexing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.prim.expr import IntImm
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    auto_inline_producers,
    get_index_map,
)
from tvm.target import Target

from ..targets import MIN_TENSOR_CORE_ARCH, sm_number
from ..tir_rewrite import LOAD, map_func, substitute, substitute_region
from . import mma_intrin, prologue
from .mma_intrin import TILE_K, TILE_M, TILE_N, WARP, ab_layout, c_layout
from .mma_tiles import MmaTile, choose_tile

MIN_SM = MIN_TENSOR_CORE_ARCH  # mma.sync m16n8k32 s8 and cp.async: Ampere and newer
VECTOR_BYTES = 16  # one cp.async / ld.global.v4 per lane
# Register budget of a GEMM thread. ptxas, given only __launch_bounds__(threads), also stops
# every GEMM kernel at 128 registers, but spilled 4 bytes in one of Swin-T's (N 192, K 384,
# int32 multiplier, no bias; sm_90); told the occupancy that budget means (minimum blocks per
# SM = the register file / (threads x budget)), it allocates the same 128 without a spill.
# Not a guarantee: full Swin-T's stage-3 patch merging (N 384, K 768, no bias, 8 warps) still
# spills 16 bytes on sm_80 at 128 either way (stop 21's note; 182 registers with 1 block).
REGISTERS_PER_THREAD = 128
REGISTER_FILE = 64 * 1024  # 32-bit registers per SM, sm_80 to sm_90
MIN_BLOCKS_ATTR = "tirx.launch_bounds_min_blocks_per_sm"  # codegen: __launch_bounds__(T, this)
MMA_DTYPES = (("int8", "int8"), ("uint8", "int8"))  # (A, B): mma.sync .s8.s8 and .u8.s8


class Fetch(Enum):
    """How a block copies one operand's k tile from global to shared memory."""

    VECTOR = "vector"  # 16 bytes a lane along k (cp.async): k contiguous, rows 16-byte aligned
    ALONG_K = "along_k"  # an element a lane, lanes along k: k contiguous, rows unaligned
    ALONG_ROWS = "along_rows"  # an element a lane, lanes along rows: B = V (K, N), N contiguous


VECTOR_FETCHES = (Fetch.VECTOR, Fetch.VECTOR)


@dataclass(frozen=True)
class MmaPlan:
    """What plan_mma decided for one GEMM: its shape, block tile and operand fetches."""

    shape: GemmShape
    tile: MmaTile
    fetches: tuple[Fetch, Fetch] = VECTOR_FETCHES


def sm_version(target: Target) -> int:
    """80 for "sm_80", 90 for "sm_90a"; 0 when the target has no arch."""
    return sm_number(str(target.attrs.get("arch", ""))) if target.kind.name == "cuda" else 0


@dataclass(frozen=True)
class GemmShape:
    """The normalised GEMM's extents: M None when symbolic (a runtime batch)."""

    batch: int | None
    m: int | None
    n: int
    k: int


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm | int) else None


def gemm_shape(func: tirx.PrimFunc, block_name: str) -> GemmShape | None:
    """(S, M, N, K) of the GEMM block `block_name`, from a scratch normalisation of `func`;
    None where a normalisation step refuses the function (then it is not an mma candidate)."""
    sch = s_tir.Schedule(func)
    block = sch.get_sblock(block_name)
    try:
        _normalise(sch, block)
    except (s_tir.ScheduleError, tvm.error.InternalError):
        return None
    extents = [_static(sch.get(loop).extent) for loop in sch.get_loops(block)]
    batch, m, n, k = extents
    if n is None or k is None:
        return None
    return GemmShape(batch, m, n, k)


def reindex_gemm(sch: s_tir.Schedule, main) -> list[tuple]:
    """Reindex the GEMM block to C[S, I, J] += A[S, I, K] * B[S, J, K] (dlight's maps), as
    both the mma and the dp4a rules start; returns (copy block, index map) for A, B and C."""
    reindex_a = sch.reindex(main, ("read", 0))
    reindex_b = sch.reindex(main, ("read", 1))
    reindex_c = sch.reindex(main, ("write", 0))
    matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
    sch.transform_layout(reindex_a, ("write", 0), a_map)
    sch.transform_layout(reindex_b, ("write", 0), b_map)
    sch.transform_layout(reindex_c, ("read", 0), c_map)
    sch.transform_block_layout(main, matmul_map)
    return [(reindex_a, a_map), (reindex_b, b_map), (reindex_c, c_map)]


def _normalise(sch: s_tir.Schedule, main) -> None:
    """reindex_gemm, with the copies iterating over the normalised indices too."""
    copies = reindex_gemm(sch, main)
    # Copies iterate over the normalised indices too (when tokens is a multiple of 16 the
    # layout change keeps them on (batch, tokens), which blocks inlining them into the fetch).
    for block, index_map in copies:
        iters = sch.get(block).iter_vars
        if len(iters) == len(index_map.initial_indices) and len(iters) > 2:
            sch.transform_block_layout(block, index_map)


def mma_func(sch: s_tir.Schedule, main, tile: MmaTile, tensorize: bool = True,
             shared_scope: str = "shared",
             fetches: tuple[Fetch, Fetch] = VECTOR_FETCHES) -> tirx.PrimFunc:
    """The scheduled PrimFunc: schedule_mma, then clamp_padded_rows, hoist_parameter_clamps
    and the register budget (declare_register_budget)."""
    scheduled = schedule_mma(sch, main, tile, tensorize, shared_scope, fetches)
    func = hoist_parameter_clamps(clamp_padded_rows(scheduled.mod["main"]))
    return declare_register_budget(func, tile.warps * WARP)


def declare_register_budget(func: tirx.PrimFunc, threads: int) -> tirx.PrimFunc:
    """`func` with the kernel's minimum blocks per SM set (MIN_BLOCKS_ATTR inside the
    blockIdx.x loop, which CUDA codegen prints as __launch_bounds__(threads, blocks)) so that
    ptxas allocates REGISTERS_PER_THREAD registers a thread (see the constant)."""
    blocks = max(1, REGISTER_FILE // (threads * REGISTERS_PER_THREAD))
    marked = []

    def post(node):
        if not (isinstance(node, tirx.For) and node.thread_binding is not None
                and node.thread_binding.thread_tag == "blockIdx.x"):
            return node
        marked.append(node)
        body = tirx.AttrStmt(IntImm("int32", 0), MIN_BLOCKS_ATTR, IntImm("int32", blocks),
                             node.body)
        return tirx.For(node.loop_var, node.min, node.extent, node.kind, body,
                        node.thread_binding, dict(node.annotations))

    func = map_func(func, post)
    if len(marked) != 1:
        raise ValueError(f"declare_register_budget: expected one blockIdx.x loop, found "
                         f"{len(marked)}")
    return func


def schedule_mma(sch: s_tir.Schedule, main, tile: MmaTile, tensorize: bool = True,
                 shared_scope: str = "shared",
                 fetches: tuple[Fetch, Fetch] = VECTOR_FETCHES) -> s_tir.Schedule:
    """Schedule the GEMM block `main` (with its epilogue consumers) on tensor cores.

    `fetches` says how each operand's tile reaches shared memory (Fetch): the padded K of
    attention's probs @ V (K = tokens) is zero-filled, so it needs element-wise fetches.

    The 16x16x32 intrinsic tile stays three loops until tensorize blockizes it (blockizing it
    first, as TVM's own mma recipe does, breaks compute_at when the row count is a multiple
    of 16: the analyzer cannot prove the padded block's region covers its consumers).
    """
    a_dtype = str(sch.get(main).reads[0].source.dtype)  # int8, or uint8 (ops.low_byte)
    _normalise(sch, main)
    sch.pad_einsum(main, [1, tile.block_m, tile.block_n, tile.k_tile])

    # The 16x16x32 tile of one intrinsic: the innermost loops (i_tc, j_tc, k_tc).
    batch, i, j, k = sch.get_loops(main)
    i, i_tc = sch.split(i, [None, TILE_M])
    j, j_tc = sch.split(j, [None, TILE_N])
    k, k_tc = sch.split(k, [None, TILE_K])

    i0, i1, i2 = sch.split(i, [None, tile.warps_m, tile.warp_m // TILE_M])
    j0, j1, j2 = sch.split(j, [None, tile.warps_n, tile.warp_n // TILE_N])
    k0, k1 = sch.split(k, [None, tile.k_tile // TILE_K])
    sch.reorder(batch, i0, j0, i1, j1, k0, k1, i2, j2, i_tc, j_tc, k_tc)
    for loop in (k1, i2, j2):  # static fragment indices: accumulators stay in registers
        sch.unroll(loop)
    block_x = sch.fuse(batch, i0)
    sch.bind(block_x, "blockIdx.x")  # rows (batch x tokens) may be many: x has 2**31 blocks
    sch.bind(j0, "blockIdx.y")
    warp = sch.fuse(i1, j1)
    sch.bind(warp, "threadIdx.y")

    # global -> shared (Fetch); rows padded by 16 bytes against bank conflicts.
    stats = prologue.statistic_blocks(sch, main)  # a row prologue's (prologue.py), or none
    for operand, how in enumerate(fetches):
        fetch = sch.cache_read(main, operand, shared_scope)
        sch.compute_at(fetch, k0, preserve_unit_loops=True)
        computed = operand == 0 and bool(stats)  # A computed by the prologue, not copied
        if computed:
            prologue.inline_elementwise(sch, fetch, stats)
            prologue.schedule_statistics(sch, stats, j0, tile.warps)
        rows, cols = sch.get_loops(fetch)[-2:]
        if how is Fetch.ALONG_ROWS:  # consecutive lanes read consecutive rows (B's N axis)
            sch.reorder(cols, rows)
            rows, cols = cols, rows
        lanes = VECTOR_BYTES if how is Fetch.VECTOR else 1
        _, f_warp, f_lane, vec = sch.split(sch.fuse(rows, cols),
                                          [None, tile.warps, WARP, lanes])
        sch.bind(f_warp, "threadIdx.y")
        sch.bind(f_lane, "threadIdx.x")
        if how is Fetch.VECTOR:
            sch.vectorize(vec)
        sch.storage_align(fetch, 0, axis=-2, factor=32, offset=16)
        if not computed:  # a prologue's fetch has its producers inlined already
            auto_inline_producers(sch, fetch)

    # shared -> registers (ldmatrix fragments), per 32-deep k step.
    loads = []
    for operand in (0, 1):
        load = sch.cache_read(main, operand, "warp")
        sch.compute_at(load, k1, preserve_unit_loops=True)
        rows, cols = sch.get_loops(load)[-2:]
        r0, r1 = sch.split(rows, [None, TILE_M])
        c0, c1 = sch.split(cols, [None, TILE_K])
        sch.reorder(r0, c0, r1, c1)
        sch.unroll(r0)
        sch.unroll(c0)
        sch.transform_layout(load, ("write", 0),
                             lambda s, r, c: (s, r // TILE_M, c // TILE_K,
                                              *ab_layout(r % TILE_M, c % TILE_K)))
        loads.append(r1)

    # C fragments -> epilogue -> global: lane = 4 * (row % 8) + (col % 8) // 2 (c_layout).
    store = sch.cache_write(main, 0, "warp")
    sch.reverse_compute_at(store, warp, preserve_unit_loops=True)
    sch.transform_layout(store, ("read", 0),
                         lambda s, r, c: (s, r // TILE_M, c // TILE_N,
                                          *c_layout(r % TILE_M, c % TILE_N)))
    auto_inline_consumer_chain(sch, store)
    rows, cols = sch.get_loops(store)[-2:]
    r0, r_hi, r_lane = sch.split(rows, [None, 2, 8])
    c0, c_hi, c_lane, c_pair = sch.split(cols, [None, 2, 4, 2])
    # With per-channel parameters (bias, multiplier, shift), columns go outside rows: each
    # lane loads its column pair's parameters into registers once, before the rows' guarded
    # stores, instead of once per row (nvcc does not merge loads under different guards).
    per_channel = _per_channel_reads(sch, store)
    if per_channel:
        sch.reorder(c0, c_hi, r_lane, c_lane, r0, r_hi, c_pair)
    else:
        sch.reorder(r0, c0, r_hi, c_hi, r_lane, c_lane, c_pair)
    lane = sch.fuse(r_lane, c_lane)
    sch.bind(lane, "threadIdx.x")
    for operand in per_channel:
        cache = sch.cache_read(store, operand, "local")
        sch.compute_at(cache, lane, preserve_unit_loops=True)
    for loop in (r0, c0, r_hi, c_hi, c_pair):
        sch.unroll(loop)

    init = sch.decompose_reduction(main, k0)
    for loop in sch.get_loops(init)[-4:-2]:  # the warp's 16x16 tiles
        sch.unroll(loop)

    # Pipeline: stage 0 = the two cp.async fetches, stage stages-1 = ldmatrix + mma.
    if tile.stages > 1:
        last = tile.stages - 1
        sch.annotate(k0, "software_pipeline_stage", [0, 0, last])
        sch.annotate(k0, "software_pipeline_order", [0, 1, 2])
        sch.annotate(k0, "software_pipeline_async_stages", [0])

    if not tensorize:
        return sch
    mma_intrin.register()
    load_a, load_b = mma_intrin.ldmatrix_names(shared_scope, a_dtype)
    sch.tensorize(loads[0], load_a)
    sch.tensorize(loads[1], load_b)
    sch.tensorize(sch.get_loops(main)[-3], mma_intrin.mma_name(a_dtype))  # the 16x16x32 tile
    sch.tensorize(sch.get_loops(init)[-2], mma_intrin.MMA_FILL)  # the 16x16 zero fill
    return sch


def hoist_parameter_clamps(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with `min(max(p[i], lo), hi)` on a per-channel parameter cached in registers
    (the requantize's shift, clamped to [1, 62] per element) computed once, in the block that
    loads the register copy, where every read of that copy is clamped the same way: the same
    values, the clamps out of the epilogue's per-element work."""
    clamps: dict = {}  # register copy -> [(lo, hi) of each clamped read]
    reads: dict = {}  # register copy -> number of reads

    def count_clamp(node):
        if parts := _clamped_copy(node):
            clamps.setdefault(parts[0], []).append(parts[1:])

    def count_read(node):
        reads[node.source] = reads.get(node.source, 0) + 1

    tvm_ffi.structural_walk(func.body, [(tirx.Min, count_clamp), (LOAD, count_read)],
                            order="post")
    hoisted = {buffer: bounds[0] for buffer, bounds in clamps.items()
               if len(set(bounds)) == 1 and reads[buffer] == len(bounds)}  # all, one way
    if not hoisted:
        return func

    def unclamp(node, mutator):
        node = mutator.default_mutate(node)
        parts = _clamped_copy(node)
        return node.a.a if parts and parts[0] in hoisted else node

    def clamp_copy(node, mutator):
        node = mutator.default_mutate(node)
        if node.buffer not in hoisted:
            return node
        lo, hi = hoisted[node.buffer]
        dtype = str(node.value.ty)
        value = tirx.min(tirx.max(node.value, IntImm(dtype, lo)), IntImm(dtype, hi))
        return tirx.BufferStore(node.buffer, value, list(node.indices))

    body = tvm_ffi.structural_mutate(
        func.body, [(tirx.Min, unclamp), (tirx.BufferStore, clamp_copy)])
    return func.with_body(body)


def _clamped_copy(node) -> tuple | None:
    """(copy, lo, hi) of `min(max(copy[i], lo), hi)` with constant lo and hi and `copy` a
    register copy (a "local" buffer that cache_read named `*_local`), else None."""
    inner = node.a
    if not (isinstance(inner, tirx.Max) and isinstance(inner.a, LOAD)
            and isinstance(inner.b, IntImm) and isinstance(node.b, IntImm)):
        return None
    buffer = inner.a.source
    if not buffer.name.endswith("_local") or buffer.scope() != "local":
        return None
    return buffer, int(inner.b), int(node.b)


def _per_channel_reads(sch: s_tir.Schedule, store) -> list[int]:
    """Indices of the epilogue block's reads that are 1-D per-channel parameters: read at one
    column index, the block's last iterator (bias, multiplier, shift of a requantize)."""
    block = sch.get(store)
    column = block.iter_vars[-1].var
    found = []
    for index, region in enumerate(block.reads):
        if len(region.region) == 1 and region.region[0].extent == 1 and \
                region.region[0].min.same_as(column):
            found.append(index)
    return found


def _padded_row(value):
    """(row var, row count) of `if_then_else(row < rows, A[..row..], 0)` (pad_einsum's fetch)."""
    if not (isinstance(value, tvm.ir.Call) and getattr(value.op, "name", "") ==
            "prim.if_then_else"):
        return None
    cond, load, other = value.args
    if not (isinstance(cond, tirx.LT) and isinstance(cond.a, tirx.Var)
            and isinstance(load, LOAD) and isinstance(other, tirx.IntImm)
            and other.value == 0):
        return None
    return cond.a, cond.b


def clamp_padded_rows(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Padding rows of A read row M - 1 instead of a zero: A_pad[m, k] = A[min(m, M - 1), k].

    pad_einsum zero-fills rows >= M with `if_then_else`, which CUDA codegen prints as an
    invalid 16-lane int8 zero and cp.async cannot predicate for integers. Rows of a GEMM are
    independent and padded rows are never stored (the epilogue store is predicated), so any
    in-bounds row serves; the copy becomes a plain 16-byte load (cp.async).
    """

    def post(node):
        if not isinstance(node, s_tir.SBlock) or not isinstance(node.body, tirx.BufferStore):
            return node
        store = node.body
        padded = _padded_row(store.value)
        if padded is None or store.buffer.scope() not in ("shared", "shared.dyn"):
            return node
        row, rows = padded
        if len(store.indices) < 2 or not store.indices[-2].same_as(row):
            return node  # padded K (the last axis) must stay zero: only rows are clamped
        vmap = {row: tirx.Min(row, rows - 1)}
        load = substitute(store.value.args[1], vmap)
        reads = [substitute_region(r, vmap) if r.source.same_as(load.source) else r
                 for r in node.reads]
        return s_tir.SBlock(list(node.iter_vars), reads, list(node.writes), node.name_hint,
                            tirx.BufferStore(store.buffer, load, list(store.indices)),
                            node.init, list(node.alloc_buffers), list(node.match_buffers),
                            dict(node.annotations))

    return map_func(func, post)


def fetch_for(k_contiguous: bool, row_bytes: int | None, k: int, tile: MmaTile) -> Fetch:
    """The Fetch of an operand: 16-byte copies need k contiguous, 16-byte aligned rows and
    no padded K (the zero fill of padded K is element-wise)."""
    if not k_contiguous:
        return Fetch.ALONG_ROWS
    if row_bytes is not None and row_bytes % VECTOR_BYTES == 0 and k % tile.k_tile == 0:
        return Fetch.VECTOR
    return Fetch.ALONG_K


def plan_mma(func: tirx.PrimFunc, block_name: str, dtypes, k_contiguous, target: Target,
             tile: MmaTile | None = None, row_bytes=(None, None)) -> MmaPlan | None:
    """The MmaPlan when the GEMM block `block_name` of `func` runs on tensor cores for
    `target`: sm_80+, int8 or uint8 x int8 (MMA_DTYPES), static N and K, and a tile
    (`tile`, or the one mma_tiles.choose_tile picks). Dense layers (no batch axis S) need
    whole N and K tiles and k-contiguous operands (16-byte copies); attention's batched
    matmuls (S = batch x heads) pad N and K = tokens like M, and probs @ V reads V (K, N)
    element by element.
    `row_bytes`: each operand's static last-axis extent in bytes (None: unknown). None: use
    another strategy."""
    if sm_version(target) < MIN_SM or tuple(dtypes) not in MMA_DTYPES:
        return None
    shape = gemm_shape(func, block_name)
    if shape is None:
        return None
    batched = shape.batch != 1
    if not batched and not all(k_contiguous):
        return None
    tile = tile or choose_tile(shape.m, shape.n, shape.k, ragged_n=batched, ragged_k=batched)
    if tile is None:
        return None
    if not batched and (shape.k % tile.k_tile or shape.n % tile.block_n):
        return None
    fetches = tuple(fetch_for(contiguous, extent, shape.k, tile)
                    for contiguous, extent in zip(k_contiguous, row_bytes, strict=True))
    return MmaPlan(shape, tile, fetches)
