"""Integer GEMM schedule for CUDA: ivit_dense and ivit_batch_matmul with their fused epilogues.

A fused GEMM PrimFunc holds one int32 sum-of-products block (int8 x int8, or attention's
int16 x int8) and elementwise epilogue blocks (bias, requantize, residual add, cast). The rule
normalizes the GEMM to C[S, I, J] += A[S, I, K] * B[S, J, K] (dlight's index maps), pads I, J
and K to the tile, stages A and B tiles in shared memory, keeps each thread's C micro-tile in
registers and computes the epilogue on the way back to global memory. With int8 operands the
inner product over 4 consecutive k is one `__dp4a` (a 4-way int8 dot product into int32).

dlight's own Matmul rule is not used for these: its int8 tensor-core path fails on the fused
epilogues (compute-at into a non-stage-pipeline scope), and it would not emit dp4a otherwise.
`GemmStrategy` names the inner-product implementation. AUTO (the default) puts int8 x int8
GEMMs on tensor cores (mma.py: mma.sync m16n8k32 s8, ldmatrix, cp.async) on sm_80+ where a
tile of mma_tiles.TILE_TABLE divides N and K, and on dp4a otherwise (sm_61..sm_75, the
classifier head's N = classes, attention's token-count N). Each scheduled GEMM PrimFunc carries
its choice in the attribute GEMM_ATTR (see gemm_choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    auto_inline_producers,
    get_index_map,
    get_reduction_blocks,
)
from tvm.target import Target

from . import intrin, mma, prologue
from .rowwise import retype_reductions

INT_INPUTS = ("int8", "uint8", "int16")


GEMM_ATTR = "ivit.gemm"  # PrimFunc attribute: {"strategy", "tile", "n", "k"}


class GemmStrategy(Enum):
    """How a GEMM computes its inner products."""

    AUTO = "auto"  # MMA where it applies (sm_80+, a tile fits), else DP4A
    MMA = "mma"  # int8 x int8 on tensor cores (mma.py); where it cannot apply, DP4A
    DP4A = "dp4a"  # int8 x int8: __dp4a over k in groups of 4 (sm_61+); else a scalar loop
    SCALAR = "scalar"  # a plain multiply-add loop (any integer operands)


@dataclass(frozen=True)
class GemmTile:
    """Block tile (threads_y * micro_y) x (threads_x * micro_x), k staged k_tile at a time."""

    threads_y: int = 16
    threads_x: int = 16
    micro_y: int = 4
    micro_x: int = 4
    k_tile: int = 32
    unroll: int = 256

    @property
    def block_y(self) -> int:
        return self.threads_y * self.micro_y

    @property
    def block_x(self) -> int:
        return self.threads_x * self.micro_x


@dataclass(frozen=True)
class GemmMatch:
    """What the rule found in a PrimFunc: the GEMM block and its operands' properties."""

    block: s_tir.schedule.SBlockRV
    dtypes: tuple[str, str]
    k_contiguous: tuple[bool, bool]  # operand's last axis is the reduction axis
    last_extent: tuple[int | None, int | None]  # static extent of each operand's last axis


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm | int) else None


def _is_gemm(stmt: s_tir.SBlock) -> bool:
    """An int32 sum of products of two int8/uint8/int16 operands in GEMM form."""
    return (
        len(stmt.reads) == 2 and len(stmt.writes) == 1
        and str(stmt.writes[0].source.dtype) == "int32"
        and all(str(region.source.dtype) in INT_INPUTS for region in stmt.reads)
        and get_index_map(stmt) is not None
    )


def match_integer_gemm(sch: s_tir.Schedule) -> GemmMatch | None:
    """The single int32 GEMM block of the function with int8/int16 operands, or None. Other
    reductions are allowed only as row statistics upstream of the GEMM (a row prologue,
    prologue.py: e.g. Shiftmax's row max and sum before probs @ V)."""
    blocks = sch.get_child_blocks(get_root_block(sch))
    reductions = get_reduction_blocks(sch, blocks)
    if reductions is None:
        reductions = _prologue_and_gemm(sch, blocks)
        if reductions is None:
            return None
    block = reductions[0]
    stmt = sch.get(block)
    if not _is_gemm(stmt):
        return None
    dtypes = tuple(str(region.source.dtype) for region in stmt.reads)
    reduce_vars = {iv.var for iv in stmt.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
    k_contiguous = tuple(
        isinstance(region.region[-1].min, tirx.Var) and region.region[-1].min in reduce_vars
        for region in stmt.reads
    )
    last_extent = tuple(_static(region.source.shape[-1]) for region in stmt.reads)
    return GemmMatch(block, dtypes, k_contiguous, last_extent)


def _prologue_and_gemm(sch: s_tir.Schedule, blocks) -> list | None:
    """[the GEMM block] where the function's other reductions all come before it (its row
    prologue's statistics), else None."""
    gemms = [block for block in blocks if _is_gemm(sch.get(block))]
    if len(gemms) != 1:
        return None
    position = [sch.get(block).same_as(sch.get(gemms[0])) for block in blocks].index(True)
    kinds = [{iv.iter_type for iv in sch.get(block).iter_vars} for block in blocks]
    if any(kind - {tirx.IterVar.DataPar, tirx.IterVar.CommReduce} for kind in kinds):
        return None
    later = kinds[position + 1:]
    if any(tirx.IterVar.CommReduce in kind for kind in later):
        return None
    return gemms


def _vector_lanes(match: GemmMatch, operand: int, tile: GemmTile) -> int:
    """Lanes of the global->shared copy: aligned, contiguous 4-byte loads where provable."""
    extent = match.last_extent[operand]
    if not match.k_contiguous[operand] or extent is None:
        return 1
    lanes = 4 if match.dtypes[operand] == "int8" else 2  # 4 bytes per thread and load
    while lanes > 1 and (extent % lanes or tile.k_tile % lanes):
        lanes //= 2
    return lanes


class IntegerGemm(GPUScheduleRule):
    """Shared-memory tiled integer GEMM with a fused epilogue; dp4a for int8 x int8."""

    def __init__(self, strategy: GemmStrategy = GemmStrategy.AUTO, tile: GemmTile | None = None,
                 mma_tile: mma.MmaTile | None = None, tensorize: bool = True):
        self.strategy = strategy
        self.tile = tile or GemmTile()
        self.mma_tile = mma_tile  # None: per shape from mma_tiles.TILE_TABLE
        self.tensorize = tensorize  # False: intrinsics' descriptions stay (twin.py's CPU twin)
        if self.tile.k_tile % 4:
            raise ValueError(f"GemmTile.k_tile must be a multiple of 4, got {self.tile.k_tile}")

    def apply(self, func: tirx.PrimFunc, target: Target, _: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        match = match_integer_gemm(sch)
        if match is None:
            return None
        name = sch.get(match.block).name_hint
        with_prologue = bool(prologue.statistic_blocks(sch, match.block))
        if with_prologue:  # its reductions all-reduce over lanes: in shuffle-safe dtypes
            func = retype_reductions(func)
            sch = s_tir.Schedule(func)
            match = match_integer_gemm(sch)
        plan = self._plan(func, match, name, target)
        if plan is not None:
            scheduled = mma.mma_func(sch, match.block, plan.tile, self.tensorize,
                                     fetches=plan.fetches)
            return s_tir.Schedule(scheduled.with_attr(
                GEMM_ATTR, _choice("mma", plan.tile.name, plan.shape)))
        if with_prologue:
            raise ValueError(
                f"{name}: a GEMM with a row prologue (Shiftmax folded into probs @ V) needs "
                f"the tensor-core schedule, which does not apply here ({target}); the CUDA "
                "pipeline folds Shiftmax only for sm_80+ and the mma/auto strategies")
        shape = mma.gemm_shape(func, name)
        use_dp4a = self.strategy is not GemmStrategy.SCALAR and match.dtypes == ("int8", "int8")
        self._schedule(sch, match, use_dp4a)
        return s_tir.Schedule(sch.mod["main"].with_attr(
            GEMM_ATTR, _choice("dp4a" if use_dp4a else "scalar", self._tile_name(), shape)))

    def _plan(self, func: tirx.PrimFunc, match: GemmMatch, name: str,
              target: Target) -> mma.MmaPlan | None:
        """The tensor-core plan for the GEMM block `name` of `func`; None: dp4a/scalar."""
        if self.strategy not in (GemmStrategy.AUTO, GemmStrategy.MMA):
            return None
        return mma.plan_mma(func, name, match.dtypes, match.k_contiguous, target,
                            self.mma_tile, row_bytes=match.last_extent)  # int8: 1 byte

    def runs_on_tensor_cores(self, func: tirx.PrimFunc, target: Target) -> bool:
        """Whether this rule puts the GEMM of `func` on tensor cores (mma.py) for `target`."""
        if not isinstance(func, tirx.PrimFunc):
            return False
        sch = s_tir.Schedule(func)
        match = match_integer_gemm(sch)
        return match is not None and self._plan(
            func, match, sch.get(match.block).name_hint, target) is not None

    def _tile_name(self) -> str:
        tile = self.tile
        return f"{tile.block_y}x{tile.block_x}x{tile.k_tile}/{tile.threads_y * tile.threads_x}t"

    def _schedule(self, sch: s_tir.Schedule, match: GemmMatch, use_dp4a: bool) -> None:
        tile = self.tile
        main = match.block

        # C[S, I, J] += A[S, I, K] * B[S, J, K], each padded to whole tiles.
        mma.reindex_gemm(sch, main)
        sch.pad_einsum(main, [1, tile.block_y, tile.block_x, tile.k_tile])

        batch, y, x, k = sch.get_loops(main)
        by, ty, yi = sch.split(y, [None, tile.threads_y, tile.micro_y])
        bx, tx, xi = sch.split(x, [None, tile.threads_x, tile.micro_x])
        ko, kc, k4 = sch.split(k, [None, tile.k_tile // 4, 4])
        sch.reorder(by, bx, ty, tx, ko, kc, yi, xi, k4)
        by = sch.fuse(batch, by)
        sch.bind(by, "blockIdx.x")  # rows (batch x tokens) may be many: x has 2**31 blocks
        sch.bind(bx, "blockIdx.y")
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.annotate(tx, ann_key="pragma_auto_unroll_max_step", ann_val=tile.unroll)
        sch.annotate(tx, ann_key="pragma_unroll_explicit", ann_val=1)

        store = sch.cache_write(main, 0, "local")  # the micro-tile of C in registers
        sch.reverse_compute_at(store, tx, preserve_unit_loops=True)

        for operand in (0, 1):
            fetch = sch.cache_read(main, operand, "shared")
            sch.compute_at(fetch, ko, preserve_unit_loops=True)
            lanes = _vector_lanes(match, operand, tile)
            rows, cols = sch.get_loops(fetch)[-2:]
            f_ty, f_tx, _, vec = sch.split(
                sch.fuse(rows, cols), [tile.threads_y, tile.threads_x, None, lanes]
            )
            sch.vectorize(vec)
            sch.bind(f_ty, "threadIdx.y")
            sch.bind(f_tx, "threadIdx.x")
            # Row stride k_tile + 4 bytes-worth: the 16 rows one warp reads lie in distinct banks.
            sch.storage_align(fetch, 0, axis=1, factor=tile.k_tile, offset=4)
            auto_inline_producers(sch, fetch)

        auto_inline_consumer_chain(sch, store)
        sch.decompose_reduction(main, ko)
        if use_dp4a and self.tensorize:
            intrin.register()
            sch.tensorize(k4, intrin.DP4A_S8S8S32)


def _choice(strategy: str, tile: str, shape: mma.GemmShape | None) -> dict:
    """The GEMM_ATTR value: strategy, tile name, and N, K where static."""
    static = {} if shape is None else {"n": shape.n, "k": shape.k}
    return {"strategy": strategy, "tile": tile, **static}


def gemm_choices(mod) -> list[dict]:
    """(PrimFunc, strategy, tile, n, k) of each GEMM the CUDA rules scheduled in `mod`, sorted
    by name: what the artifact's manifest records."""
    found = []
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and GEMM_ATTR in func.attrs:
            choice = {str(key): value for key, value in func.attrs[GEMM_ATTR].items()}
            found.append({"primfunc": gv.name_hint, **{
                key: int(value) if key in ("n", "k") else str(value)
                for key, value in choice.items()}})
    return sorted(found, key=lambda row: row["primfunc"])
