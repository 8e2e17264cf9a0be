"""Attention's batch matmuls on VNNI / AVX2: runtime operand packing spliced into the fused kernel.

A fused kernel's `batch_matmul_acc` block (ops.integer_batch_matmul, with its requantize
epilogue) whose operands share their batch axes and have static matrix extents is replaced
(schedules.cpu.splice) by:

- q @ k^T, int8 x int8 (transpose_b): the dense's trick per head,
      acc[i, j] = sum_c (q[i, c] + 128) * k[j, c]   (vpdpbusd, k packed [T/16, d/4, 16, 4])
      acc[s, j] = sum_c 128 * k[j, c]              (the last padded row s: all 128)
      out[i, j] = acc[i, j] - sums[j]              (sums[j] = acc[s, j], copied per head)
  or, where the ISA has no uint8 x int8 instruction (AVX2: vpmaddwd), both widened to int16,
      out[i, j] = sum_c q[i, c] * k[j, c]           (k widened, packed [T/16, d/2, 16, 2])
- probabilities @ v, int16 (or int8) x int8: vpdpwssd / vpmaddwd on int16 pairs,
      out[i, n] = sum_j p[i, j] * v[j, n]           (v widened, packed [d/16, T/2, 16, 2])

Exact: one operand of every product was int8, so |a * b| <= 2^15 * 2^7 and a vpmaddwd /
vpdpwssd pair sum (< 2^23) never wraps; the int32 accumulation is ops.integer_batch_matmul's
own. In the model p is Shiftmax's output, 0 <= p <= 2^15 - 1 (docs/semantics.md: y =
(e * f) >> 16 with e * f <= 2^31 - 1), so sum_j p * v stays below 2^31 for T2 < 512 even at
the extremes (and a row's probabilities sum to about 2^15: no bound on T2 there). q @ k^T
widened: a pair sum is at most 2^15.

Both pad rows to the register block (gemm.choose_tile) and K to whole groups inside the
kernel (clamped reads, zero-filled packed operand), so any token count works (197, 49, 1).
Each head's packing runs on the thread that then multiplies it. Batch matmuls of other forms,
and all of them on CPUs without these instructions (isa "generic"), keep the plain schedule
below (`schedule_batch_matmul`).
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.ir.prim import expr_deep_equal
from tvm.s_tir import Schedule
from tvm.s_tir.schedule import ScheduleError

from ivit_tvm.ops import names
from ivit_tvm.ops.tir_query import find_block

from .dense import MAX_REDUCE
from .gemm import blocks_after, choose_tile, epilogue_like_acc, tile_gemm, vectorize_epilogue
from .isa import SHIFT, GemmPath
from .splice import rebuild, splice
from .vnni import K_GROUP, K_GROUP_I16, LANES

MATMUL_BLOCK = names.BATCH_MATMUL_ACC_BLOCK  # ops.integer_batch_matmul's reduction
QK_BLOCKS = ("qk_shift", "qk_pack", "qk_acc")
SUM_ROWS = 1  # q @ k^T: the shifted operand's last row is all 128 (see packed_qk)
QK_COLSUM = "qk_colsum"  # that row of the GEMM copied out, read by the epilogue
QK_PRODUCT_BOUND = 2**14  # |q * k| of two int8 values: sum_c q[i, c] * k[j, c] <= d * 2**14
QK16_BLOCKS = ("qk_widen", "qk_pack16", "qk16_acc")  # the widened (int16) form
PV_BLOCKS = ("pv_pad", "pv_pack", "pv_acc")
INNER_SPAN = "ivit.inner_span"  # a packing stage's in-bounds extent of its innermost axis
KIND_BLOCKS = {"qk": QK_BLOCKS, "qk16": QK16_BLOCKS, "pv": PV_BLOCKS}


def _ceil(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _static(*extents) -> list[int]:
    return [int(e) for e in extents]


# ---- compute definitions -----------------------------------------------------------------------
def packed_qk(q: te.Tensor, k: te.Tensor, vector_bytes: int = 64) -> te.Tensor:
    """q (..., T, d) int8 @ k (..., T2, d)^T int8 -> (..., T, T2) int32, uint8 x int8 (see the
    module). The last row of the shifted operand is all 128, so the GEMM's own last row is
    the correction 128 * sum_c k[j, c] that the output subtracts."""
    *batch, rows, depth = q.shape
    rows, depth, cols = _static(rows, depth, k.shape[-2])
    tile = choose_tile(_ceil(cols, LANES) // LANES, K_GROUP, vector_bytes)
    rows_p, depth_p = _ceil(rows + SUM_ROWS, tile.rows), _ceil(depth, K_GROUP)
    cols_p = _ceil(cols, LANES)
    sum_row = rows_p - SUM_ROWS

    def shifted(*index):
        *b, i, c = index
        value = q[(*b, tirx.min(i, rows - 1), tirx.min(c, depth - 1))]
        value = (value.astype("int32") + SHIFT).astype("uint8")
        shift_of_zero = tirx.const(SHIFT, "uint8")  # also the sum row's value
        inside = tirx.all(i < sum_row, c < depth) if depth != depth_p else i < sum_row
        return tirx.if_then_else(inside, value, shift_of_zero)

    def packed(*index):
        *b, jt, ct, ji, ci = index
        j, c = jt * LANES + ji, ct * K_GROUP + ci
        value = k[(*b, tirx.min(j, cols - 1), tirx.min(c, depth - 1))]
        return tirx.if_then_else(tirx.all(j < cols, c < depth), value, tirx.const(0, "int8"))

    q_u8 = te.compute((*batch, rows_p, depth_p), shifted, name="qk_shift")  # uint8
    k_packed = te.compute(
        (*batch, cols_p // LANES, depth_p // K_GROUP, LANES, K_GROUP), packed, name="qk_pack"
    )  # int8, zero padded
    r = te.reduce_axis((0, depth_p), name="r")
    acc = te.compute(
        (*batch, rows_p, cols_p),
        lambda *index: te.sum(
            q_u8[(*index[:-1], r)].astype("int32")
            * k_packed[
                (*index[:-2], index[-1] // LANES, r // K_GROUP, index[-1] % LANES, r % K_GROUP)
            ].astype("int32"),
            axis=r,
        ),
        name="qk_acc",
    )  # (..., Tp, T2p) int32; the last row: 128 * sum_c k[j, c], |.| <= 2**14 * d
    column_sums = te.compute(
        (*batch, cols), lambda *index: acc[(*index[:-1], sum_row, index[-1])], name=QK_COLSUM
    )  # (..., T2) int32: the sum row on its own, so the epilogue reads acc at one index
    return te.compute(
        (*batch, rows, cols),
        lambda *index: _qk_bounded(acc[index] - column_sums[(*index[:-2], index[-1])], depth),
        name="qk_out",
    )  # (..., T, T2) int32


def _qk_bounded(value: tirx.PrimExpr, depth: int) -> tirx.PrimExpr:
    """q.k clamped to +-depth * 2**14: a clamp that never bites (int8 x int8 products), which
    states the bound for rounding.py's analyzer once the epilogue is inlined."""
    bound = depth * QK_PRODUCT_BOUND
    return tirx.max(tirx.min(value, bound), -bound)


def packed_qk16(q: te.Tensor, k: te.Tensor, vector_bytes: int = 32) -> te.Tensor:
    """q (..., T, d) int8 @ k (..., T2, d)^T int8 -> (..., T, T2) int32, both widened to int16
    (see the module)."""
    *batch, rows, depth = q.shape
    rows, depth, cols = _static(rows, depth, k.shape[-2])
    tile = choose_tile(_ceil(cols, LANES) // LANES, K_GROUP_I16, vector_bytes)
    rows_p, depth_p = _ceil(rows, tile.rows), _ceil(depth, K_GROUP_I16)
    cols_p = _ceil(cols, LANES)

    def widened(*index):  # values past d meet zeros in k_packed
        *b, i, c = index
        return q[(*b, tirx.min(i, rows - 1), tirx.min(c, depth - 1))].astype("int16")

    def packed(*index):
        *b, jt, ct, ji, ci = index
        j, c = jt * LANES + ji, ct * K_GROUP_I16 + ci
        value = k[(*b, tirx.min(j, cols - 1), tirx.min(c, depth - 1))].astype("int16")
        return tirx.if_then_else(tirx.all(j < cols, c < depth), value, tirx.const(0, "int16"))

    q_16 = te.compute((*batch, rows_p, depth_p), widened, name="qk_widen")  # int16
    k_packed = te.compute(
        (*batch, cols_p // LANES, depth_p // K_GROUP_I16, LANES, K_GROUP_I16), packed,
        name="qk_pack16",
    )  # int16, zero padded
    r = te.reduce_axis((0, depth_p), name="r")
    acc = te.compute(
        (*batch, rows_p, cols_p),
        lambda *index: te.sum(
            q_16[(*index[:-1], r)].astype("int32")
            * k_packed[
                (*index[:-2], index[-1] // LANES, r // K_GROUP_I16, index[-1] % LANES,
                 r % K_GROUP_I16)
            ].astype("int32"),
            axis=r,
        ),
        name="qk16_acc",
    )  # (..., Tp, T2p) int32, |.| <= 2**14 * d
    return te.compute((*batch, rows, cols), lambda *index: _qk_bounded(acc[index], depth),
                      name="qk_out")


def packed_pv(p: te.Tensor, v: te.Tensor, vector_bytes: int = 64) -> te.Tensor:
    """p (..., T, T2) int16/int8 @ v (..., T2, d) int8 -> (..., T, d) int32 (see the module)."""
    *batch, rows, reduce = p.shape
    rows, reduce, cols = _static(rows, reduce, v.shape[-1])
    tile = choose_tile(_ceil(cols, LANES) // LANES, K_GROUP_I16, vector_bytes)
    rows_p, cols_p = _ceil(rows, tile.rows), _ceil(cols, LANES)
    reduce_p = _ceil(reduce, K_GROUP_I16)

    def padded(*index):  # values past T2 meet zeros in v_packed
        *b, i, j = index
        return p[(*b, tirx.min(i, rows - 1), tirx.min(j, reduce - 1))].astype("int16")

    def packed(*index):
        *b, nt, jt, ni, ji = index
        n, j = nt * LANES + ni, jt * K_GROUP_I16 + ji
        value = v[(*b, tirx.min(j, reduce - 1), tirx.min(n, cols - 1))].astype("int16")
        return tirx.if_then_else(tirx.all(j < reduce, n < cols), value, tirx.const(0, "int16"))

    p_pad = te.compute((*batch, rows_p, reduce_p), padded, name="pv_pad",
                       attrs={INNER_SPAN: reduce})  # int16; columns past T2: clamped reads
    v_packed = te.compute(
        (*batch, cols_p // LANES, reduce_p // K_GROUP_I16, LANES, K_GROUP_I16),
        packed,
        name="pv_pack",
    )  # int16, zero padded
    r = te.reduce_axis((0, reduce_p), name="r")
    acc = te.compute(
        (*batch, rows_p, cols_p),
        lambda *index: te.sum(
            p_pad[(*index[:-1], r)].astype("int32")
            * v_packed[
                (*index[:-2], index[-1] // LANES, r // K_GROUP_I16, index[-1] % LANES,
                 r % K_GROUP_I16)
            ].astype("int32"),
            axis=r,
        ),
        name="pv_acc",
    )  # (..., Tp, dp) int32
    return te.compute((*batch, rows, cols), lambda *index: acc[index], name="pv_out")


# ---- the rewrite --------------------------------------------------------------------------------
def matmul_kind(func: tirx.PrimFunc, path: GemmPath) -> str | None:
    """"qk" / "qk16" / "pv" when func's batch_matmul_acc block is one this module packs on
    `path` (qk: uint8 x int8 instruction, qk16: int16 pairs only), else None."""
    block = find_block(func, MATMUL_BLOCK)
    if block is None or len(block.reads) != 2 or path.s16s16 is None:
        return None
    a, b = (region.source.ty for region in block.reads)
    if len(a.shape) != len(b.shape) or len(a.shape) < 3:
        return None
    same_batch = all(
        expr_deep_equal(x, y) for x, y in zip(a.shape[:-2], b.shape[:-2], strict=True)
    )
    static = all(isinstance(e, tirx.IntImm) for e in (*a.shape[-2:], *b.shape[-2:]))
    if not (same_batch and static):
        return None
    transposed = expr_deep_equal(block.reads[1].region[-1].min, block.iter_vars[-1].var)
    dtypes = (str(a.dtype), str(b.dtype))
    if transposed and dtypes == ("int8", "int8") and int(a.shape[-1]) <= MAX_REDUCE:
        return "qk" if path.u8s8 else "qk16"
    if not transposed and dtypes in (("int16", "int8"), ("int8", "int8")):
        return "pv"
    return None


def rewrite_matmul(func: tirx.PrimFunc, kind: str, vector_bytes: int = 64) -> tirx.PrimFunc:
    """func with its batch_matmul_acc computed by packed_qk / packed_qk16 / packed_pv."""
    block = find_block(func, MATMUL_BLOCK)
    operands = [region.source for region in block.reads]
    compute = {"qk": packed_qk, "qk16": packed_qk16, "pv": packed_pv}[kind]
    body, _ = splice(
        func, MATMUL_BLOCK, lambda a, b: compute(a, b, vector_bytes), operands,
        block.writes[0].source,
    )
    return rebuild(func, func.params, body)


# ---- schedules ----------------------------------------------------------------------------------
def inline_layout(sch: Schedule, first_stage: str) -> None:
    """Inline the head split schedules.fold_layout folded into the kernel (reshape,
    strided_slice, transpose before the packing: the packing stages then read the qkv tensor
    itself); blocks that cannot be inlined stay for the generic schedule. (The head merge
    after the GEMM is inlined into the requantize by gemm.epilogue_like_acc.)"""
    root = [sch.get(rv).name_hint for rv in sch.get_child_blocks(sch.get_sblock("root"))]
    for name in reversed(root[: root.index(first_stage)]):
        try:
            sch.compute_inline(sch.get_sblock(name))
        except ScheduleError:
            continue


def _split_padding(sch: Schedule, stage) -> None:
    """Partition a packing stage's innermost loop at its INNER_SPAN annotation (pv_pad: the
    197 columns of p, then one pad column), so that the first part reads at an affine index
    (the clamp min(j, K - 1) simplifies away there) and LLVM copies it with vector loads.
    Through the clamp, every element was a scalar load (p @ V at batch 8: a third of the
    kernel's time)."""
    span = sch.get(stage).annotations.get(INNER_SPAN)
    inner = sch.get_loops(stage)[-1]
    extent = sch.get(inner).extent
    if span is None or not isinstance(extent, tirx.IntImm) or not 0 < int(span) < int(extent):
        return
    sch.loop_partition(inner, [int(span), None])


def schedule_packed_attention(sch: Schedule, kind: str, path: GemmPath) -> set[str]:
    """The rewritten qk / qk16 / pv kernel: per head, pack on the thread, then the tiled GEMM
    on the path's intrinsic for the packed operand's dtype, its epilogue (requantize, the head
    merge) per head right after it (gemm.epilogue_like_acc). Returns the names of the blocks
    it scheduled.

    (On isa "generic" the pipeline keeps the plain batch matmul: a vectorized loop over these
    packed operands is 2-4x slower than schedule_batch_matmul's.)"""
    *prologue, acc_name = KIND_BLOCKS[kind]
    inline_layout(sch, prologue[0])
    acc = sch.get_sblock(acc_name)
    n_tiles = int(sch.get(sch.get_loops(acc)[-2]).extent) // LANES
    operand, packed = (region.source.ty for region in sch.get(acc).reads)
    group, intrin = int(packed.shape[-1]), path.intrinsic(str(operand.dtype))
    stages = tuple(sch.get_sblock(name) for name in prologue)
    tile = choose_tile(n_tiles, group, path.vector_bytes)
    after = blocks_after(sch, acc_name)
    sums = [name for name in after if name == QK_COLSUM]
    epilogue = epilogue_like_acc(sch, acc, [name for name in after if name not in sums])
    # the column sums move first: TVM moves the epilogue only where all its producers are
    moved = [*(sch.get_sblock(name) for name in sums), epilogue] if epilogue is not None else []
    unmoved = tile_gemm(sch, acc, tile, intrin, prologue=stages, epilogue=moved)
    for stage in stages:
        if stage not in unmoved:
            _split_padding(sch, stage)
    for stage in unmoved:  # could not move under the head loop
        if stage in moved:
            continue
        *outer, inner = sch.get_loops(stage)
        sch.parallel(sch.fuse(*outer))
        sch.vectorize(inner)
    claimed = {*prologue, acc_name, *(sums if moved and moved[0] not in unmoved else ())}
    return claimed | vectorize_epilogue(sch, epilogue, unmoved, path.vector_bytes)


def schedule_batch_matmul(sch: Schedule, vector_bytes: int) -> None:
    """A batch matmul this module does not pack: parallel over (batch, rows); the reduction
    stays innermost when B is transposed (LLVM vectorizes the dot product), else it moves out
    and the output row is vectorized: out[m, :] += a[m, k] * b[k, :]."""
    block = sch.get_sblock(MATMUL_BLOCK)
    *batch, rows, cols, reduce = sch.get_loops(block)
    node = sch.get(block)
    transposed = expr_deep_equal(node.reads[1].region[-1].min, node.iter_vars[-1].var)
    if not transposed:
        sch.reorder(reduce, cols)
        extent = sch.get(cols).extent
        if isinstance(extent, tirx.IntImm) and int(extent) % (vector_bytes // 4) == 0:
            sch.vectorize(cols)
    sch.parallel(sch.fuse(*batch, rows))
    if not transposed:
        sch.decompose_reduction(block, reduce)
