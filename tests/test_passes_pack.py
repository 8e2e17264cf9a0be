"""PackWeights: constant dense weights in the VNNI layout [N/16, K/4, 16, 4]; results unchanged."""

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from relay_passes import VNNI, BlockedLayout, PackWeights, layout_for_target

W = np.arange(18, dtype="int8").reshape(3, 6) - 9  # (N, K) = (3, 6): pads to (16, 8)


def packed_by_definition(weight: np.ndarray, block_n: int, block_k: int) -> np.ndarray:
    """P[n // bn, k // bk, n % bn, k % bk] = W[n, k], zeros elsewhere, one element at a time."""
    rows, cols = weight.shape
    packed = np.zeros((-(-rows // block_n), -(-cols // block_k), block_n, block_k), weight.dtype)
    for n in range(rows):
        for k in range(cols):
            packed[n // block_n, k // block_k, n % block_n, k % block_k] = weight[n, k]
    return packed


W_PACKED = packed_by_definition(W, 16, 4)  # (1, 2, 16, 4) int8


@I.ir_module
class Before:
    @T.prim_func(private=True, s_tir=True)
    def ivit_dense(
        x: T.Buffer((T.int64(2), T.int64(6)), "int8"),
        w: T.Buffer((T.int64(3), T.int64(6)), "int8"),
        acc: T.Buffer((T.int64(2), T.int64(3)), "int32"),
    ):
        for i, j, k in T.grid(T.int64(2), T.int64(3), T.int64(6)):
            with T.sblock("dense_acc"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    acc[vi, vj] = 0
                acc[vi, vj] = acc[vi, vj] + T.Cast("int32", x[vi, vk]) * T.Cast("int32", w[vj, vk])

    @R.function
    def main_int8(x: R.Tensor((2, 6), "int8")) -> R.Tensor((2, 3), "int32"):
        cls = Before
        with R.dataflow():
            acc = R.call_tir(cls.ivit_dense, (x, R.const(W)), out_ty=R.Tensor((2, 3), "int32"))
            R.output(acc)
        return acc


@I.ir_module
class Expected:
    @T.prim_func(private=True, s_tir=True)
    def ivit_dense_n16k4(
        x: T.Buffer((T.int64(2), T.int64(6)), "int8"),
        w: T.Buffer((T.int64(1), T.int64(2), T.int64(16), T.int64(4)), "int8"),
        acc: T.Buffer((T.int64(2), T.int64(3)), "int32"),
    ):
        # only n < 3, k < 6 are read: the zero padding of w never is
        for i, j, k in T.grid(T.int64(2), T.int64(3), T.int64(6)):
            with T.sblock("dense_acc"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                T.reads(x[vi, vk], w[vj // T.int64(16), vk // T.int64(4), vj % T.int64(16),
                                     vk % T.int64(4)])
                T.writes(acc[vi, vj])
                with T.init():
                    acc[vi, vj] = 0
                acc[vi, vj] = acc[vi, vj] + T.Cast("int32", x[vi, vk]) * T.Cast(
                    "int32", w[vj // T.int64(16), vk // T.int64(4), vj % T.int64(16),
                               vk % T.int64(4)]
                )

    @R.function
    def main_int8(x: R.Tensor((2, 6), "int8")) -> R.Tensor((2, 3), "int32"):
        cls = Expected
        with R.dataflow():
            acc = R.call_tir(cls.ivit_dense_n16k4, (x, R.const(W_PACKED)),
                             out_ty=R.Tensor((2, 3), "int32"))
            R.output(acc)
        return acc


def test_constant_weight_is_packed_and_the_call_reads_the_packed_layout():
    tvm.ir.assert_structural_equal(PackWeights(VNNI)(Before), Expected)


@pytest.mark.parametrize("shape", [(3, 6), (16, 4), (20, 10), (33, 192)])
def test_blocked_layout_pack_matches_its_definition(shape):
    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, size=shape, dtype=np.int8)
    np.testing.assert_array_equal(VNNI.pack(weight), packed_by_definition(weight, 16, 4))


def _run(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main_int8"](tvm.runtime.tensor(x)).numpy()


def test_packed_dense_is_bit_exact():
    x = np.random.default_rng(1).integers(-128, 128, size=(2, 6), dtype=np.int8)
    out = _run(PackWeights(VNNI)(Before), x)
    np.testing.assert_array_equal(out, x.astype(np.int32) @ W.astype(np.int32).T)
    np.testing.assert_array_equal(out, _run(Before, x))


def test_weight_that_is_not_a_constant_is_left_alone():
    @R.function
    def main_int8(x: R.Tensor((2, 6), "int8"), w: R.Tensor((3, 6), "int8")):
        with R.dataflow():
            acc = R.call_tir(Before.get_global_var("ivit_dense"), (x, w),
                             out_ty=R.Tensor((2, 3), "int32"))
            R.output(acc)
        return acc

    before = Before.clone()
    before[before.get_global_var("main_int8")] = main_int8
    tvm.ir.assert_structural_equal(PackWeights(VNNI)(before), before)


def test_cuda_keeps_the_nk_layout():
    assert layout_for_target("cuda") is None
    tvm.ir.assert_structural_equal(PackWeights(layout_for_target("cuda"))(Before), Before)


def test_llvm_uses_vnni_blocks_of_16_by_4():
    assert layout_for_target("llvm") == BlockedLayout(block_n=16, block_k=4)


def test_unknown_target_kind_is_refused():
    with pytest.raises(ValueError, match="no weight layout for target kind 'rocm'"):
        layout_for_target("rocm")
