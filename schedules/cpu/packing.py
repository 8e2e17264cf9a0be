"""PackDenseGEMMs: the int8 dense weights packed at compile time for schedules.cpu.dense.

After FuseOps/FuseTIR the pass finds each fused kernel's `dense_acc` block (ops.integer_dense's
GEMM, fused with its bias/requantize epilogue by FuseOps or by relay_passes.FuseRequantize)
whose weight is a constant (N, K) int8 argument. The call gets the weight packed as
[Np/16, Kp/g, 16, g] (Np, Kp: N and K rounded up to 16 and g, zero-filled; isa.GemmPath: g = 4
int8 for vpdpbusd, 2 int16 for vpmaddwd, 1 int8 for the vectorized loop), with int8 weights a
new per-channel constant corr[n] = -128 * sum_k W[n, k], and the block becomes
dense.packed_dense's loop nests (schedules.cpu.splice); the epilogue blocks read dense_acc as
before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.ir.expr import Constant, Var
from tvm.ir.prim import expr_deep_equal

from ivit_tvm.ops.tir_query import block_names, find_block, load_indices

from ..targets import Capabilities
from .dense import ACC_BLOCK, MAX_REDUCE, SHIFT_BLOCK, packed_dense
from .isa import SHIFT, GemmPath, gemm_path
from .splice import rebuild, splice
from .vnni import K_GROUP, LANES


def pack_weight(
    weight_q: np.ndarray, group: int = K_GROUP, dtype: str = "int8"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, K) int8 -> packed (Np/16, Kp/g, 16, g) `dtype` and corr (Np,) int32 (-128 * row
    sums), or None for int16 (signed x signed: nothing to correct).

    group 4 int8 feeds vpdpbusd; group 2 int16 vpmaddwd; group 1 int8 (16 channels contiguous
    per k) the vectorized loop.
    """
    n, k = weight_q.shape
    n_pad, k_pad = -n % LANES, -k % group
    padded = np.pad(weight_q.astype(np.int8), ((0, n_pad), (0, k_pad)))  # (Np, Kp) int8
    np_, kp = padded.shape
    packed = padded.reshape(np_ // LANES, LANES, kp // group, group).transpose(0, 2, 1, 3)
    packed = np.ascontiguousarray(packed.astype(dtype))  # int8 -> int16 is exact
    if dtype == "int16":
        return packed, None
    corr = -SHIFT * padded.astype(np.int64).sum(axis=1)  # (Np,) |.| <= 2**14 * K
    return packed, corr.astype(np.int32)


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
    shape = tuple(int(e) for e in weight.ty.shape)
    lead_equal = all(
        expr_deep_equal(a, b) for a, b in zip(x.ty.shape[:-1], acc.ty.shape[:-1], strict=True)
    )
    if str(weight.ty.dtype) != "int8" or shape != (n, k) or not lead_equal:
        return None
    if not _reads_as_dense(block, x, weight):
        return None
    return DenseSite(x, is_param.index(True), acc, n, k)


def _reads_as_dense(block, x: Var, weight: Var) -> bool:
    """x[..., k] and W[n, k], n and k the block's last two iterators."""
    *lead, n, k = (iv.var for iv in block.iter_vars)
    analyzer = tvm.sym.Analyzer()

    def reads(buffer: Var, want: list) -> bool:
        return all(
            len(got) == len(want)
            and all(analyzer.can_prove_equal(g, w) for g, w in zip(got, want, strict=True))
            for got in load_indices(block.body, buffer)
        )

    return reads(x, [*lead, k]) and reads(weight, [n, k])


def rewrite_dense(
    func: tirx.PrimFunc, site: DenseSite, n_inputs: int, path: GemmPath
) -> tirx.PrimFunc:
    """func with its dense_acc computed by packed_dense; parameters: the weight becomes the
    packed weight (pack_weight's layout for the path), and with int8 weights corr (Np,) int32
    follows the inputs."""
    group, dtype = path.group, path.weight_dtype
    tiles_n, groups_k = -(-site.out_features // LANES), -(-site.reduce // group)
    inputs = [site.x, ((tiles_n, groups_k, LANES, group), dtype, "weight_packed")]
    if dtype == "int8":
        inputs.append(((tiles_n * LANES,), "int32", "corr"))
    body, (packed, *corr) = splice(
        func, ACC_BLOCK,
        lambda x, w, c=None: packed_dense(x, w, c, site.out_features, path.vector_bytes),
        inputs, site.acc,
    )
    params = list(func.params)
    params[site.weight_index] = packed
    params[n_inputs:n_inputs] = corr
    return rebuild(func, params, body)


@relax.expr_functor.mutator
class _DenseRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, path: GemmPath):
        super().__init__(mod)
        self.mod_ = mod
        self.path = path
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
        weight = args[site.weight_index].value.numpy()
        packed, corr = pack_weight(weight, self.path.group, self.path.weight_dtype)
        if gv.name_hint not in self.rewritten:
            new_func = rewrite_dense(func, site, len(args), self.path)
            self.rewritten[gv.name_hint] = self.builder_.add_func(new_func, gv.name_hint)
        args[site.weight_index] = relax.const(packed, self.path.weight_dtype)
        if corr is not None:
            args.append(relax.const(corr, "int32"))
        return relax.call_tir(self.rewritten[gv.name_hint], args, list(call.ty_args))


def pack_dense_gemms(caps: Capabilities) -> tvm.transform.Pass:
    """Pack every constant-weight dense of the fused module (see the module) in the layout of
    the target's GemmPath (isa.py)."""
    path = gemm_path(caps)

    @tvm.transform.module_pass(opt_level=0, name="PackDenseGEMMs")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rewriter = _DenseRewriter(mod, path)
        for gv, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
        return relax.transform.DeadCodeElimination()(rewriter.builder_.get())

    return _pass
