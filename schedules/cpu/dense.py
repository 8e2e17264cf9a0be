"""The int8 dense on VNNI over packed weights: the TE kernel and its schedule.

packing.PackDenseGEMMs gives each constant-weight dense its weight packed as [Np/16, Kp/4, 16, 4]
(Np, Kp: N and K rounded up to 16 and 4, zero-filled) and a per-channel constant, and swaps
the `dense_acc` block for `packed_dense`'s loop nests:

    acc[m, n] = sum_k (x[m, k] + 128) * W[n, k]      corr[n] = -128 * sum_k W[n, k]
    dense_acc[..., n] = acc[m, n] + corr[n]          (exactly sum_k x[m, k] * W[n, k])

uint8 x int8 is the operand order vpdpbusd needs. Rows (the leading axes flattened, M = B*T,
symbolic) are padded to the register block (gemm.choose_tile) by repeating the last row, K by
zeros, so the GEMM needs no tail; padded rows are computed and never read. The epilogue blocks
(bias, requantize) read dense_acc as before. corr is added there rather than as the
reduction's init: te.create_prim_func drops a te.sum init in TVM 0.27, and the add is free.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.s_tir import Schedule

from ivit_tvm.ops import names

from .gemm import choose_tile, tile_gemm
from .vnni import LANES, register

SHIFT = 128  # int8 -> uint8 offset of the activations
ACC_BLOCK = names.DENSE_ACC_BLOCK  # ops.integer_dense's reduction; also the name of the packed GEMM
SHIFT_BLOCK = "dense_shift"
K_BLOCK = 768  # bytes of K per pass over the register block (keeps a weight panel in L1/L2)
MAX_REDUCE = 65535  # sum_k (x + 128) * w <= 255 * 128 * K stays below 2**31


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
    q_x: te.Tensor, weight_packed: te.Tensor, corr: te.Tensor, out_features: int,
    vector_bytes: int = 64,
) -> te.Tensor:
    """sum_k q_x[..., k] * W[n, k]: q_x (..., K) int8, W packed -> (..., N) int32 (see module)."""
    lead, reduce = list(q_x.shape[:-1]), q_x.shape[-1]
    n_tiles, k_groups, _, group = (int(e) for e in weight_packed.shape)
    block_rows = choose_tile(n_tiles, group, vector_bytes).rows
    rows, rows_padded = flat_rows(lead, block_rows)
    k_padded = k_groups * group

    def shifted(m, k):
        row = unravel(tirx.min(m, rows - 1), lead)
        value = (q_x[(*row, tirx.min(k, reduce - 1))].astype("int32") + SHIFT).astype("uint8")
        if isinstance(reduce, tirx.IntImm | int) and int(reduce) == k_padded:
            return value
        return tirx.if_then_else(k < reduce, value, tirx.const(SHIFT, "uint8"))

    q_u8 = te.compute((rows_padded, k_padded), shifted, name=SHIFT_BLOCK)  # (Mp, Kp) uint8
    k = te.reduce_axis((0, k_padded), name="k")
    acc = te.compute(
        (rows_padded, n_tiles * LANES),
        lambda m, n: te.sum(
            q_u8[m, k].astype("int32")
            * weight_packed[n // LANES, k // group, n % LANES, k % group].astype("int32"),
            axis=k,
        ),
        name=ACC_BLOCK,
    )  # (Mp, Np) int32: the dot products of the shifted activations

    return te.compute(
        (*lead, out_features),
        lambda *index: acc[ravel(index[:-1], lead), index[-1]] + corr[index[-1]],
        name="dense_corr",
    )  # (..., N) int32, the signed dot products


# ---- schedule -----------------------------------------------------------------------------------
def schedule_packed_dense(sch: Schedule, vnni: bool, vector_bytes: int = 64) -> None:
    """The packed GEMM (gemm.tile_gemm), parallel over row blocks, after the activation shift
    as its own parallel, vectorized loop (under the GEMM's row loop it would allocate its
    tile per iteration). vnni: vpdpbusd; otherwise a vectorized loop."""
    acc = sch.get_sblock(ACC_BLOCK)
    n_tiles, _, _, group = (int(e) for e in sch.get(acc).reads[1].source.ty.shape)
    tile = choose_tile(n_tiles, group, vector_bytes)
    tile_gemm(sch, acc, tile, register() if vnni else None, K_BLOCK)
    rows, reduce = sch.get_loops(sch.get_sblock(SHIFT_BLOCK))
    sch.parallel(rows)
    sch.vectorize(reduce)
