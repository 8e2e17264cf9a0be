"""FuseRequantize: GEMM -> requantize becomes one PrimFunc; results stay bit-exact."""

import numpy as np
import pytest
import torch
import tvm
from support import deit_and_images
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from ivit_tvm.frontend import from_model
from relay_passes import FuseRequantize

W = np.arange(12, dtype="int8").reshape(3, 4) - 6  # (N, K) int8


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def ivit_dense(
        x: T.Buffer((T.int64(2), T.int64(4)), "int8"),
        w: T.Buffer((T.int64(3), T.int64(4)), "int8"),
        acc: T.Buffer((T.int64(2), T.int64(3)), "int32"),
    ):
        for i, j, k in T.grid(T.int64(2), T.int64(3), T.int64(4)):
            with T.sblock("dense_acc"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    acc[vi, vj] = 0
                acc[vi, vj] = acc[vi, vj] + T.Cast("int32", x[vi, vk]) * T.Cast("int32", w[vj, vk])

    @T.prim_func(private=True, s_tir=True)
    def ivit_requantize(
        acc: T.Buffer((T.int64(2), T.int64(3)), "int32"),
        q: T.Buffer((T.int64(2), T.int64(3)), "int8"),
    ):
        for i, j in T.grid(T.int64(2), T.int64(3)):
            with T.sblock("requantize"):
                vi, vj = T.axis.remap("SS", [i, j])
                q[vi, vj] = T.Cast("int8", T.min(T.max(acc[vi, vj] >> 2, -128), 127))

    @R.function
    def main_int8(x: R.Tensor((2, 4), "int8")) -> R.Tensor((2, 3), "int8"):
        cls = Before
        with R.dataflow():
            acc = R.call_tir(cls.ivit_dense, (x, R.const(W)), out_ty=R.Tensor((2, 3), "int32"))
            q = R.call_tir(cls.ivit_requantize, (acc,), out_ty=R.Tensor((2, 3), "int8"))
            R.output(q)
        return q


@I.ir_module
class Expected:
    @T.prim_func(private=True, s_tir=True)
    def fused_ivit_dense_ivit_requantize(
        x: T.Buffer((T.int64(2), T.int64(4)), "int8"),
        w: T.Buffer((T.int64(3), T.int64(4)), "int8"),
        q: T.Buffer((T.int64(2), T.int64(3)), "int8"),
    ):
        T.func_attr({"tirx.noalias": True})
        acc = T.sblock_alloc_buffer((T.int64(2), T.int64(3)), "int32")  # never leaves the kernel
        for i, j, k in T.grid(T.int64(2), T.int64(3), T.int64(4)):
            with T.sblock("dense_acc"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    acc[vi, vj] = 0
                acc[vi, vj] = acc[vi, vj] + T.Cast("int32", x[vi, vk]) * T.Cast("int32", w[vj, vk])
        for i, j in T.grid(T.int64(2), T.int64(3)):
            with T.sblock("requantize"):
                vi, vj = T.axis.remap("SS", [i, j])
                q[vi, vj] = T.Cast("int8", T.min(T.max(acc[vi, vj] >> 2, -128), 127))

    @R.function
    def main_int8(x: R.Tensor((2, 4), "int8")) -> R.Tensor((2, 3), "int8"):
        cls = Expected
        with R.dataflow():
            q = R.call_tir(cls.fused_ivit_dense_ivit_requantize, (x, R.const(W)),
                           out_ty=R.Tensor((2, 3), "int8"))
            R.output(q)
        return q


def test_dense_then_requantize_becomes_one_fused_primfunc():
    tvm.ir.assert_structural_equal(FuseRequantize()(Before), Expected)


def _module(consumers) -> tvm.IRModule:
    """main_int8(x) = dense(x, W) followed by `consumers(bb, acc)` (a list of outputs)."""
    bb = relax.BlockBuilder()
    dense_gv = bb.add_func(Before["ivit_dense"], "ivit_dense")
    requantize_gv = bb.add_func(Before["ivit_requantize"], "ivit_requantize")
    x = relax.Var("x", relax.TensorType((2, 4), "int8"))
    with bb.function("main_int8", [x]):
        with bb.dataflow():
            acc = bb.emit(relax.call_tir(dense_gv, [x, relax.const(W)],
                                         relax.TensorType((2, 3), "int32")))
            outputs = consumers(bb, acc, requantize_gv)
            out = bb.emit_output(relax.Tuple(outputs))
        bb.emit_func_output(out)
    return bb.finalize()


def test_gemm_with_a_second_consumer_is_not_fused():
    def requantize_and_keep_acc(bb, acc, requantize_gv):
        q = bb.emit(relax.call_tir(requantize_gv, [acc], relax.TensorType((2, 3), "int8")))
        return [q, acc]  # the int32 accumulator is an output too: it must stay a tensor

    before = _module(requantize_and_keep_acc)
    tvm.ir.assert_structural_equal(FuseRequantize()(before), before)


def test_gemm_followed_by_another_op_is_not_fused():
    def add_then_requantize(bb, acc, requantize_gv):
        doubled = bb.emit(relax.op.add(acc, acc))
        return [bb.emit(relax.call_tir(requantize_gv, [doubled], relax.TensorType((2, 3), "int8")))]

    before = _module(add_then_requantize)
    tvm.ir.assert_structural_equal(FuseRequantize()(before), before)


@pytest.fixture(scope="module")
def deit():
    model, images = deit_and_images()
    return from_model(model).mod, images


def _run(mod: tvm.IRModule, images: torch.Tensor) -> np.ndarray:
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(images.numpy())).numpy()


def test_real_model_fuses_every_gemm_requantize_pair(deit):
    mod, _ = deit
    names = {gv.name_hint for gv in FuseRequantize()(mod).get_global_vars()}
    fused = sorted(name for name in names if name.startswith("fused_"))
    # per block: qkv, proj, fc1, fc2 (dense) and q @ k^T (batch_matmul); plus the patch embed
    assert fused == [
        "fused_ivit_batch_matmul_ivit_requantize3",
        "fused_ivit_batch_matmul_ivit_requantize7",
        "fused_ivit_dense1_ivit_requantize2",
        "fused_ivit_dense2_ivit_requantize5",
        "fused_ivit_dense3_ivit_requantize6",
        "fused_ivit_dense4_ivit_requantize5",
        "fused_ivit_dense_ivit_requantize",
    ]
    assert "ivit_dense5" in names  # the head's logits have no requantize
    assert "ivit_batch_matmul1" in names  # attn @ v feeds a permute, not a requantize


def test_real_model_stays_bit_exact(deit):
    mod, images = deit
    np.testing.assert_array_equal(_run(FuseRequantize()(mod), images), _run(mod, images))
