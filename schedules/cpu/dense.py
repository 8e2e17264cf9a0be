"""The int8 dense on VNNI: weights packed at compile time, activations shifted to uint8.

`PackDenseGEMMs` (after FuseOps/FuseTIR) finds each fused kernel's `dense_acc` block
(ops.integer_dense's GEMM, fused with its bias/requantize epilogue by FuseOps or by
relay_passes.FuseRequantize) whose weight is a constant argument, (N, K) or already packed
by relay_passes.PackWeights as [N/16, K/4, 16, 4]. The call gets the weight packed as
[Np/16, Kp/4, 16, 4] (Np, Kp: N and K rounded up to 16 and 4, zero-filled) and a new
per-channel constant, and the block becomes (schedules.cpu.splice):

    acc[m, n] = sum_k (x[m, k] + 128) * W[n, k]      corr[n] = -128 * sum_k W[n, k]
    dense_acc[..., n] = acc[m, n] + corr[n]          (exactly sum_k x[m, k] * W[n, k])

uint8 x int8 is the operand order vpdpbusd needs. Rows (the leading axes flattened, M = B*T,
symbolic) are padded to the register block (gemm.choose_tile) by repeating the last row, K by
zeros, so the GEMM needs no tail; padded rows are computed and never read. The epilogue blocks
(bias, requantize) read dense_acc as before. corr is added there rather than as the
reduction's init: te.create_prim_func drops a te.sum init in TVM 0.27, and the add is free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.ir.expr import Constant, Var
from tvm.ir.prim import expr_deep_equal
from tvm.s_tir import Schedule

from .gemm import choose_tile, tile_gemm
from .generic import block_names, load_indices
from .splice import find_block, rebuild, splice
from .vnni import K_GROUP, LANES, has_vnni, register
from .vnni import vector_bytes as target_vector_bytes

SHIFT = 128  # int8 -> uint8 offset of the activations
ACC_BLOCK = "dense_acc"  # ops.integer_dense's reduction; also the name of the packed GEMM
SHIFT_BLOCK = "dense_shift"
K_BLOCK = 768  # bytes of K per pass over the register block (keeps a weight panel in L1/L2)
MAX_REDUCE = 65535  # sum_k (x + 128) * w <= 255 * 128 * K stays below 2**31


# ---- constants ----------------------------------------------------------------------------------
def pack_weight(weight_q: np.ndarray, group: int = K_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """(N, K) int8 -> packed (Np/16, Kp/g, 16, g) int8 and corr (Np,) int32 (-128 * row sums).

    group 4 feeds vpdpbusd; group 1 (16 channels contiguous per k) the vectorized fallback.
    """
    n, k = weight_q.shape
    n_pad, k_pad = -n % LANES, -k % group
    padded = np.pad(weight_q.astype(np.int8), ((0, n_pad), (0, k_pad)))  # (Np, Kp) int8
    np_, kp = padded.shape
    packed = padded.reshape(np_ // LANES, LANES, kp // group, group).transpose(0, 2, 1, 3)
    corr = -SHIFT * padded.astype(np.int64).sum(axis=1)  # (Np,) |.| <= 2**14 * K
    return np.ascontiguousarray(packed), corr.astype(np.int32)


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


def packed_dense(
    q_x: te.Tensor, weight_packed: te.Tensor, corr: te.Tensor, out_features: int,
    vector_bytes: int = 64,
) -> te.Tensor:
    """sum_k q_x[..., k] * W[n, k]: q_x (..., K) int8, W packed -> (..., N) int32 (see module)."""
    lead, reduce = list(q_x.shape[:-1]), q_x.shape[-1]
    n_tiles, k_groups, _, group = (int(e) for e in weight_packed.shape)
    block_rows = choose_tile(n_tiles, group, vector_bytes).rows
    rows = lead[0]
    for extent in lead[1:]:
        rows = rows * extent
    rows_padded = tirx.floordiv(rows + (block_rows - 1), block_rows) * block_rows
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


# ---- the Relax pass -----------------------------------------------------------------------------
@dataclass(frozen=True)
class DenseSite:
    """A fused kernel's dense_acc block: activations x (..., K), weight param, output (..., N)."""

    x: Var
    weight_index: int  # position of the weight among the PrimFunc's parameters
    acc: Var
    out_features: int
    reduce: int


def find_dense(func: tirx.PrimFunc) -> DenseSite | None:
    """The dense GEMM of a fused kernel, if it has one this module can pack."""
    block = find_block(func, ACC_BLOCK)
    if block is None or SHIFT_BLOCK in block_names(func) or len(block.reads) != 2:
        return None
    acc = block.writes[0].source
    params = list(func.params)
    for w, a in ((1, 0), (0, 1)):
        weight, x = block.reads[w].source, block.reads[a].source
        is_param = [p.same_as(weight) for p in params]
        if any(is_param) and len(x.ty.shape) == len(acc.ty.shape):
            break
    else:
        return None
    n, k = acc.ty.shape[-1], x.ty.shape[-1]
    if not (isinstance(n, tirx.IntImm) and isinstance(k, tirx.IntImm)):
        return None
    n, k = int(n), int(k)
    if k > MAX_REDUCE:
        return None
    plain, packed = (n, k), (-(-n // LANES), -(-k // K_GROUP), LANES, K_GROUP)
    shape = tuple(int(e) for e in weight.ty.shape)
    lead_equal = all(
        expr_deep_equal(a, b) for a, b in zip(x.ty.shape[:-1], acc.ty.shape[:-1], strict=True)
    )
    if str(weight.ty.dtype) != "int8" or shape not in (plain, packed) or not lead_equal:
        return None
    if not _reads_as_dense(block, x, weight):
        return None
    return DenseSite(x, is_param.index(True), acc, n, k)


def _reads_as_dense(block, x: Var, weight: Var) -> bool:
    """x[..., k] and W[n, k] (or PackWeights' P[n // 16, k // 4, n % 16, k % 4]), n and k the
    block's last two iterators."""
    *lead, n, k = (iv.var for iv in block.iter_vars)
    if len(weight.ty.shape) == 2:
        weight_index = [n, k]
    else:
        weight_index = [n // LANES, k // K_GROUP, n % LANES, k % K_GROUP]
    analyzer = tvm.sym.Analyzer()

    def reads(buffer: Var, want: list) -> bool:
        return all(
            len(got) == len(want)
            and all(analyzer.can_prove_equal(g, w) for g, w in zip(got, want, strict=True))
            for got in load_indices(block.body, buffer)
        )

    return reads(x, [*lead, k]) and reads(weight, weight_index)


def unpack_weight(weight: np.ndarray, n: int, k: int) -> np.ndarray:
    """The (N, K) weight from itself or from relay_passes.PackWeights' [N/16, K/4, 16, 4]."""
    if weight.ndim == 2:
        return weight
    tiles_n, tiles_k, lanes, group = weight.shape
    return weight.transpose(0, 2, 1, 3).reshape(tiles_n * lanes, tiles_k * group)[:n, :k]


def rewrite_dense(
    func: tirx.PrimFunc, site: DenseSite, n_inputs: int, group: int, vector_bytes: int
) -> tirx.PrimFunc:
    """func with its dense_acc computed by packed_dense; parameters: the weight becomes the
    packed weight (pack_weight's layout for `group`), and corr (Np,) int32 follows the inputs."""
    tiles_n, groups_k = -(-site.out_features // LANES), -(-site.reduce // group)
    body, (packed, corr) = splice(
        func, ACC_BLOCK,
        lambda x, w, c: packed_dense(x, w, c, site.out_features, vector_bytes),
        [site.x, ((tiles_n, groups_k, LANES, group), "int8", "weight_packed"),
         ((tiles_n * LANES,), "int32", "corr")],
        site.acc,
    )
    params = list(func.params)
    params[site.weight_index] = packed
    params.insert(n_inputs, corr)
    return rebuild(func, params, body)


@relax.expr_functor.mutator
class _DenseRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, group: int, vector_bytes: int):
        super().__init__(mod)
        self.mod_ = mod
        self.group = group
        self.vector_bytes = vector_bytes
        self.rewritten: dict[str, tvm.ir.GlobalVar] = {}

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != tvm.ir.Op.get("relax.call_tir") or len(call.args) != 2:
            return call
        gv, args = call.args[0], list(call.args[1].fields)
        func = self.mod_[gv] if gv in self.mod_.get_global_vars() else None
        site = find_dense(func) if isinstance(func, tirx.PrimFunc) else None
        if site is None or not isinstance(args[site.weight_index], Constant):
            return call
        weight = unpack_weight(args[site.weight_index].value.numpy(), site.out_features,
                               site.reduce)
        packed, corr = pack_weight(weight, self.group)
        if gv.name_hint not in self.rewritten:
            new_func = rewrite_dense(func, site, len(args), self.group, self.vector_bytes)
            self.rewritten[gv.name_hint] = self.builder_.add_func(new_func, gv.name_hint)
        args[site.weight_index] = relax.const(packed, "int8")
        args.append(relax.const(corr, "int32"))
        return relax.call_tir(self.rewritten[gv.name_hint], args, list(call.ty_args))


def pack_dense_gemms(target: tvm.target.Target) -> tvm.transform.Pass:
    """Pack every constant-weight dense of the fused module (see the module): in groups of 4
    k for vpdpbusd, or of 1 (16 channels contiguous per k) for the fallback without VNNI."""
    group = K_GROUP if has_vnni(target) else 1

    @tvm.transform.module_pass(opt_level=0, name="PackDenseGEMMs")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _DenseRewriter(mod, group, target_vector_bytes(target))
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return _pass


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
