"""The float32 variant of the CPU backend: the FP32 TVM baseline's GEMMs, packed and tiled.

    ex = tvm.compile(mod, info.target, relax_pipeline=float_cpu_pipeline(info))  # pipeline.py

ivit-tvm's pipeline packs every int8 dense weight and runs its GEMMs in hand-written
register-blocked kernels; a float model has no int8 GEMM, so those would never run and its
GEMMs would fall to the generic schedule (a scalar reduction loop). For the same effort the
float variant does the same for float: each `matmul(x, W)` with a constant W (K, N), and the
patch embedding's conv2d as patches @ W (as ivit-tvm's frontend lowers it), gets W packed as
[Np/16, K/4, 4, 16] and a register-blocked kernel (ROWS rows x up to 3 vectors of 16 float32
accumulators, 16-lane FMA, parallel over row blocks, K blocked); the model's other matmuls
(attention) get a vectorized, parallel loop nest (rules.FloatDense, rules.FloatBatchMatmul),
and every other kernel the generic CPU schedule. exp, erf (GELU) and softmax use TVM's fast
approximations (FastMathTransform): the default erf is a scalar libm call per element, which
made GELU 25x slower than PyTorch's; ivit-tvm's integer kernels approximate them too.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx, topi
from tvm.ir.expr import Constant
from tvm.s_tir import Schedule

from .dense import flat_rows, ravel, unravel

PACKED_NAME = "fp32_dense_packed"
BATCH_MATMUL_NAME = "fp32_batch_matmul"
PAD_BLOCK, ACC_BLOCK, MATMUL_BLOCK = "fp32_dense_pad", "fp32_dense_acc", "fp32_matmul_acc"
LANES = 16  # float32 per 512-bit vector
K_GROUP = 4  # K steps unrolled in the register block
ROWS = 8  # rows of the register block
K_BLOCK = 192  # K per pass over a register block (a weight panel stays in L1)
OUT_ELEMWISE_FUSABLE = 4  # relax OpPatternKind::kOutEWiseFusable: epilogues fuse after it


def pack_float_weight(weight: np.ndarray) -> np.ndarray:
    """(K, N) float32 -> (Np/16, Kp/4, 4, 16), zero-filled: 16 output channels contiguous."""
    k, n = weight.shape
    padded = np.pad(weight.astype(np.float32), ((0, -k % K_GROUP), (0, -n % LANES)))
    kp, np_ = padded.shape
    packed = padded.reshape(kp // K_GROUP, K_GROUP, np_ // LANES, LANES).transpose(2, 0, 1, 3)
    return np.ascontiguousarray(packed)


def float_packed_dense(x: te.Tensor, weight_packed: te.Tensor, out_features: int) -> te.Tensor:
    """x (..., K) float32 @ W -> (..., N) float32, W packed by `pack_float_weight`.

    Rows (leading axes flattened, symbolic) are padded to a multiple of ROWS by repeating the
    last row, and K to a multiple of 4 with zeros, in a copy (as the int8 kernel's +128 shift
    stage copies its input), so the register block needs no tail."""
    lead, reduce = list(x.shape[:-1]), x.shape[-1]
    n_tiles, k_groups = (int(e) for e in weight_packed.shape[:2])
    rows, rows_padded = flat_rows(lead, ROWS)
    k_padded = k_groups * K_GROUP

    def copy(m, k):
        value = x[(*unravel(tirx.min(m, rows - 1), lead), tirx.min(k, reduce - 1))]
        return tirx.if_then_else(k < reduce, value, tirx.const(0, "float32"))

    x_padded = te.compute((rows_padded, k_padded), copy, name=PAD_BLOCK)  # (Mp, Kp) float32
    k = te.reduce_axis((0, k_padded), name="k")
    acc = te.compute(
        (rows_padded, n_tiles * LANES),
        lambda m, n: te.sum(
            x_padded[m, k] * weight_packed[n // LANES, k // K_GROUP, k % K_GROUP, n % LANES],
            axis=k),
        name=ACC_BLOCK,
    )  # (Mp, Np) float32
    return te.compute((*lead, out_features),
                      lambda *index: acc[ravel(index[:-1], lead), index[-1]],
                      name="dense_out")  # (..., N) float32


def fast_gelu(x: te.Tensor) -> te.Tensor:
    """GELU as TVM legalizes it, x * (0.5 + 0.5 * erf(x / sqrt 2)), with topi.fast_erf."""
    erf = topi.fast_erf(x * tirx.const(0.5**0.5, "float32"))
    return x * (tirx.const(0.5, "float32") + erf * tirx.const(0.5, "float32"))


def float_batch_matmul(a: te.Tensor, b: te.Tensor) -> te.Tensor:
    """(..., M, K) @ (..., K, N) float32 (attention's q @ k^T and p @ v)."""
    k = te.reduce_axis((0, a.shape[-1]), name="k")
    return te.compute((*a.shape[:-1], b.shape[-1]),
                      lambda *i: te.sum(a[(*i[:-1], k)] * b[(*i[:-2], k, i[-1])], axis=k),
                      name=MATMUL_BLOCK)


@relax.expr_functor.mutator
class _FloatRewriter(relax.PyExprMutator):
    """matmul(x, constant W) -> fp32_dense_packed, also where W is broadcast over the batch
    (torch.export's Linear on 3-D inputs) and for a patchifying conv2d (stride = kernel: the
    patch embedding, as ivit-tvm's frontend does it); other float matmuls of equal rank -> a TE
    batch matmul for schedule_float_batch_matmul; gelu -> fast_gelu."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _is_float32(call):
            return call
        if call.op == tvm.ir.Op.get("relax.nn.gelu"):
            return self.builder_.call_te(fast_gelu, call.args[0], primfunc_name_hint="gelu")
        if call.op == tvm.ir.Op.get("relax.nn.conv2d"):
            patches = self._patch_embedding(call)
            return call if patches is None else patches
        if call.op != tvm.ir.Op.get("relax.matmul"):
            return call
        a, b = call.args
        weight = self._constant_matrix(b)
        if weight is not None:
            return self._dense(a, weight)
        if a.ty.ndim == b.ty.ndim >= 3:
            return self.builder_.call_te(float_batch_matmul, a, b,
                                         primfunc_name_hint=BATCH_MATMUL_NAME)
        return call

    def _constant_matrix(self, expr: relax.Expr) -> np.ndarray | None:
        """The (K, N) value of a constant matrix, or of one broadcast to (..., K, N)."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if (isinstance(bound, relax.Call) and bound.op == tvm.ir.Op.get("relax.broadcast_to")
                    and isinstance(bound.args[0], Constant)):
                expr = bound.args[0]
        if isinstance(expr, Constant) and expr.ty.ndim == 2:
            return expr.value.numpy()
        return None

    def _dense(self, x: relax.Expr, weight: np.ndarray) -> relax.Expr:
        """x (..., K) @ weight (K, N) with the packed kernel; epilogues may fuse after it."""
        packed = relax.const(pack_float_weight(weight))  # (Np/16, Kp/4, 4, 16) float32
        new_call = self.builder_.call_te(float_packed_dense, x, packed, weight.shape[1],
                                         primfunc_name_hint=PACKED_NAME)
        gv = new_call.args[0]
        func = self.builder_.get()[gv]
        self.builder_.update_func(gv, func.with_attr("op_pattern", OUT_ELEMWISE_FUSABLE))
        return new_call

    def _patch_embedding(self, call: relax.Call) -> relax.Expr | None:
        """conv2d with stride = kernel, no padding, NCHW/OIHW, constant weight -> patches
        (B * H/p * W/p, C * p * p) @ W^T -> (B, O, H/p, W/p)."""
        x, weight = call.args
        attrs = call.attrs
        if not isinstance(weight, Constant) or attrs.data_layout != "NCHW" or \
                attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW" or attrs.groups != 1:
            return None
        out_ch, in_ch, p, q = (int(v) for v in weight.ty.shape)
        batch, channels, height, width = x.ty.shape
        if p != q or [int(s) for s in attrs.strides] != [p, p] or any(
                int(v) for v in attrs.padding) or any(int(d) != 1 for d in attrs.dilation) or \
                not all(isinstance(v, tirx.IntImm) for v in (channels, height, width)) or \
                int(height) % p or int(width) % p:
            return None
        rows, cols = int(height) // p, int(width) // p
        patches = self.builder_.emit(relax.op.reshape(x, [batch, in_ch, rows, p, cols, p]))
        patches = self.builder_.emit(relax.op.permute_dims(patches, [0, 2, 4, 1, 3, 5]))
        patches = self.builder_.emit(
            relax.op.reshape(patches, [batch * rows * cols, in_ch * p * p]))
        matrix = weight.value.numpy().reshape(out_ch, in_ch * p * p).T  # (C*p*p, O)
        out = self.builder_.emit(self._dense(patches, matrix))  # (B * rows * cols, O)
        out = self.builder_.emit(relax.op.reshape(out, [batch, rows, cols, out_ch]))
        return relax.op.permute_dims(out, [0, 3, 1, 2])  # (B, O, rows, cols) float32


@tvm.transform.module_pass(opt_level=0, name="PackFloatMatmuls")
def pack_float_matmuls(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every float32 matmul with a constant weight -> the packed kernel (see _FloatRewriter)."""
    rewriter = _FloatRewriter(mod)
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gv, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def schedule_float_dense(sch: Schedule) -> None:
    """Register blocks of ROWS x (cols x 16) float32, FMA over 4 unrolled K steps."""
    acc = sch.get_sblock(ACC_BLOCK)
    m, n, k = sch.get_loops(acc)
    n_tiles = int(sch.get(n).extent) // LANES
    k_extent = int(sch.get(k).extent)
    cols = next(c for c in (3, 4, 2, 1) if n_tiles % c == 0)
    k_outer = k_extent // K_BLOCK if k_extent % K_BLOCK == 0 else 1
    mo, mi = sch.split(m, [None, ROWS])
    no, nb, ni = sch.split(n, [None, cols, LANES])
    ko, kb, ki = sch.split(k, [k_outer, None, K_GROUP])
    sch.reorder(mo, no, ko, kb, mi, nb, ki, ni)
    sch.parallel(mo)
    for loop in (mi, nb, ki):
        sch.unroll(loop)
    sch.vectorize(ni)
    init = sch.decompose_reduction(acc, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    rows, reduce = sch.get_loops(sch.get_sblock(PAD_BLOCK))
    sch.parallel(rows)
    sch.vectorize(reduce)


def schedule_float_batch_matmul(sch: Schedule) -> None:
    """out[..., m, :] += a[..., m, k] * b[..., k, :], parallel over rows: the row loop is
    innermost and contiguous, vectorized explicitly when it is a multiple of 16 lanes (else
    LLVM vectorizes it with a tail: padding the row to 16 measured slower on DeiT-T)."""
    block = sch.get_sblock(MATMUL_BLOCK)
    *batch, rows, cols, reduce = sch.get_loops(block)
    sch.reorder(reduce, cols)
    extent = sch.get(cols).extent
    if isinstance(extent, tirx.IntImm) and int(extent) % LANES == 0:
        sch.vectorize(cols)
    sch.parallel(sch.fuse(*batch, rows))
    sch.decompose_reduction(block, reduce)


def _is_float32(call: relax.Call) -> bool:
    return all(getattr(arg.ty, "dtype", None) == "float32" for arg in call.args
               if isinstance(arg.ty, relax.TensorType))
