"""The int8 dense over packed weights: the TE kernel and its schedule.

packing.PackDenseGEMMs gives each constant-weight dense its weight packed as [Np/16, Kp/g, 16, g]
(Np, Kp: N and K rounded up to 16 and g, zero-filled; g and the dtype from isa.GemmPath) and
swaps the `dense_acc` block for `packed_dense`'s loop nests. With int8 weights (vpdpbusd, g = 4;
the vectorized loop, g = 1) the activations are shifted to uint8 and a per-channel constant
corrects the sum:

    acc[m, n] = sum_k (x[m, k] + 128) * W[n, k]      corr[n] = -128 * sum_k W[n, k]
    dense_acc[..., n] = acc[m, n] + corr[n]          (exactly sum_k x[m, k] * W[n, k])

uint8 x int8 is the operand order vpdpbusd needs. With int16 weights (vpmaddwd, g = 2) the
activations are widened to int16 instead, signed x signed, and there is no correction:

    dense_acc[..., n] = acc[m, n] = sum_k int16(x[m, k]) * W[n, k]

Rows (the leading axes flattened, M = B*T, symbolic) are padded to the register block
(gemm.choose_tile) by repeating the last row, K by zeros (the shifted zero 128 meets zero
weights), so the GEMM needs no tail; padded rows are computed and never read. The epilogue
blocks (bias, requantize) read dense_acc as before. corr is added there rather than as the
reduction's init: te.create_prim_func drops a te.sum init in TVM 0.27, and the add is free.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.s_tir import Schedule

from ivit_tvm.ops import names

from .gemm import blocks_after, choose_tile, epilogue_like_acc, tile_gemm, vectorize_epilogue
from .isa import SHIFT, GemmPath
from .vnni import LANES

ACC_BLOCK = names.DENSE_ACC_BLOCK  # ops.integer_dense's reduction; also the name of the packed GEMM
SHIFT_BLOCK = "dense_shift"  # the activations as the GEMM reads them: uint8 shifted or int16
K_BLOCK = 768  # bytes of K per pass over the register block (keeps a weight panel in L1/L2)
MAX_REDUCE = 65535  # sum_k (x + 128) * w <= 255 * 128 * K stays below 2**31 (int16: 2**14 K)


# ---- compute definition -------------------------------------------------------------------------
def unravel(flat: tirx.PrimExpr, shape) -> list[tirx.PrimExpr]:
    """Row-major multi-index of a flat index into `shape`."""
    index = []
    for extent in reversed(shape[1:]):
        index.append(tirx.floormod(flat, extent))
        flat = tirx.floordiv(flat, extent)
    return [flat, *reversed(index)]


def ravel(index, shape) -> tirx.PrimExpr:
    flat = index[0]
    for i, extent in zip(index[1:], shape[1:], strict=True):
        flat = flat * extent + i
    return flat


def flat_rows(lead, multiple: int) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """The row count of the leading axes flattened, and that count rounded up to `multiple`
    (GEMM kernels pad rows by repeating the last one, so register blocks need no tail)."""
    rows = lead[0]
    for extent in lead[1:]:
        rows = rows * extent
    return rows, tirx.floordiv(rows + (multiple - 1), multiple) * multiple


def packed_dense(
    q_x: te.Tensor, weight_packed: te.Tensor, corr: te.Tensor | None, out_features: int,
    vector_bytes: int = 64,
) -> te.Tensor:
    """sum_k q_x[..., k] * W[n, k]: q_x (..., K) int8, W packed -> (..., N) int32 (see module).
    weight_packed int8: activations shifted to uint8, corr (Np,) int32 required; int16:
    activations widened to int16, corr None."""
    lead, reduce = list(q_x.shape[:-1]), q_x.shape[-1]
    n_tiles, k_groups, _, group = (int(e) for e in weight_packed.shape)
    widen = str(weight_packed.dtype) == "int16"
    if widen != (corr is None):
        raise ValueError("packed_dense: int16 weights take no correction, int8 weights need one")
    block_rows = choose_tile(n_tiles, group, vector_bytes).rows
    rows, rows_padded = flat_rows(lead, block_rows)
    k_padded = k_groups * group
    dtype, shift = ("int16", 0) if widen else ("uint8", SHIFT)

    def operand(m, k):
        row = unravel(tirx.min(m, rows - 1), lead)
        value = (q_x[(*row, tirx.min(k, reduce - 1))].astype("int32") + shift).astype(dtype)
        if isinstance(reduce, tirx.IntImm | int) and int(reduce) == k_padded:
            return value
        return tirx.if_then_else(k < reduce, value, tirx.const(shift, dtype))

    q_op = te.compute((rows_padded, k_padded), operand, name=SHIFT_BLOCK)  # (Mp, Kp) uint8/int16
    k = te.reduce_axis((0, k_padded), name="k")
    acc = te.compute(
        (rows_padded, n_tiles * LANES),
        lambda m, n: te.sum(
            q_op[m, k].astype("int32")
            * weight_packed[n // LANES, k // group, n % LANES, k % group].astype("int32"),
            axis=k,
        ),
        name=ACC_BLOCK,
    )  # (Mp, Np) int32: the dot products of the (shifted) activations

    def out(*index):
        value = acc[ravel(index[:-1], lead), index[-1]]
        return value if corr is None else value + corr[index[-1]]

    return te.compute((*lead, out_features), out, name="dense_corr")  # (..., N) int32


# ---- schedule -----------------------------------------------------------------------------------
def schedule_packed_dense(sch: Schedule, path: GemmPath) -> set[str]:
    """The packed GEMM (gemm.tile_gemm), parallel over row blocks, its epilogue (requantize)
    computed per row block after it where it is one elementwise chain
    (gemm.epilogue_like_acc), after the activation shift or widening as its own parallel,
    vectorized loop (under the GEMM's row loop it would allocate its tile per iteration).
    The path's intrinsic for the operand dtype (vpdpbusd, vpmaddwd), or a vectorized loop
    where it has none. Returns the names of the blocks it scheduled.

    Fusing the epilogue keeps each row block's int32 accumulators in cache between the GEMM
    and the requantize (DeiT-S fc1 at batch 8: a 9.7 MB round trip otherwise); measured on Zen 4,
    2 threads, the DeiT-S batch-8 kernels alone, interleaved: fc1 3.8 -> 3.0 ms, qkv 2.3 -> 2.1 ms,
    proj and fc2 unchanged."""
    acc = sch.get_sblock(ACC_BLOCK)
    operand, weight = (region.source.ty for region in sch.get(acc).reads)
    n_tiles, _, _, group = (int(e) for e in weight.shape)
    tile = choose_tile(n_tiles, group, path.vector_bytes)
    intrin = path.intrinsic(str(operand.dtype)) if group > 1 else None
    epilogue = epilogue_like_acc(sch, acc, blocks_after(sch, ACC_BLOCK))
    unmoved = tile_gemm(sch, acc, tile, intrin, K_BLOCK,
                        epilogue=[epilogue] if epilogue is not None else [])
    scheduled = {ACC_BLOCK, SHIFT_BLOCK}
    scheduled |= vectorize_epilogue(sch, epilogue, unmoved, path.vector_bytes)
    rows, reduce = sch.get_loops(sch.get_sblock(SHIFT_BLOCK))
    sch.parallel(rows)
    sch.vectorize(reduce)
    return scheduled
