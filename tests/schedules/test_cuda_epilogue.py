"""The tensor-core GEMM's epilogue (schedules/cuda/mma.py): per-channel parameters in
registers, and `mma.hoist_parameter_clamps` moving a parameter's clamp into the block that
loads it only where every read of the register copy is clamped the same way. Exactness of the
scheduled kernels is the CPU twins' (test_cuda_mma.py, test_cuda_twin_model.py); here the
rewrite itself, run on llvm against the original."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from ivit_tvm.schedules.cuda import mma, mma_tiles
from ivit_tvm.schedules.cuda.gemm import match_integer_gemm
from test_cuda_mma import dense_requantize
from tvm import s_tir, tirx
from tvm.script import tirx as T


def clamped_reads(func: tirx.PrimFunc) -> int:
    """Clamps min(max(copy[i], lo), hi) of a register copy (a `*_local` buffer)."""
    found = []

    def visit(node):
        load = node.a.a if isinstance(node.a, tirx.Max) else None
        if isinstance(load, tvm.ir.TensorLoad) and load.source.name.endswith("_local"):
            found.append(load.source.name)

    tvm_ffi.structural_walk(func.body, [(tirx.Min, visit)], order="post")
    return len(found)


def clamped_reads_of_copy(second_lo: int) -> tirx.PrimFunc:
    """A register copy p_local read twice, clamped to [1, 62] and to [second_lo, 62]."""

    @T.prim_func
    def func(p: T.Buffer((8,), "int64"), out: T.Buffer((8, 2), "int64")):
        p_local = T.alloc_local((1,), "int64")
        for i in range(8):
            p_local[0] = p[i]
            out[i, 0] = (T.int64(1) << T.min(T.max(p_local[0], T.int64(1)), T.int64(62))
                         - T.int64(1))
            out[i, 1] = T.int64(-1000) >> T.min(T.max(p_local[0], T.int64(second_lo)),
                                                T.int64(62))

    return func


all_clamped = clamped_reads_of_copy(1)
two_clamps = clamped_reads_of_copy(0)


@T.prim_func
def one_read_unclamped(p: T.Buffer((8,), "int64"), out: T.Buffer((8, 2), "int64")):
    p_local = T.alloc_local((1,), "int64")
    for i in range(8):
        p_local[0] = p[i]
        out[i, 0] = T.int64(1) << T.min(T.max(p_local[0], T.int64(1)), T.int64(62)) - T.int64(1)
        out[i, 1] = p_local[0]


def run(func: tirx.PrimFunc, p: np.ndarray) -> np.ndarray:
    ex = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((8, 2), "int64"))
    ex["main"](tvm.runtime.tensor(p), out)
    return out.numpy()


def test_clamp_moves_to_the_register_copy_and_computes_the_same():
    hoisted = mma.hoist_parameter_clamps(all_clamped)
    assert clamped_reads(all_clamped) == 2 and clamped_reads(hoisted) == 0
    assert "p_local = T.min(T.max(p[i], T.int64(1)), T.int64(62))" in hoisted.script()
    p = np.array([-5, 0, 1, 2, 30, 62, 63, 100], "int64")
    np.testing.assert_array_equal(run(hoisted, p), run(all_clamped, p))


@pytest.mark.parametrize("func", [one_read_unclamped, two_clamps], ids=["unclamped", "two"])
def test_copy_read_otherwise_keeps_its_clamps(func):
    assert mma.hoist_parameter_clamps(func).same_as(func)


def test_gemm_epilogue_clamps_the_shift_once_per_column():
    tile = mma_tiles.choose_tile(None, 384, 384)
    sch = s_tir.Schedule(dense_requantize(197, 384, 384))
    func = mma.mma_func(sch, match_integer_gemm(sch).block, tile, tensorize=False)
    assert clamped_reads(func) == 0
    assert "shift_local[v0] = T.min(T.max(shift[v0], T.int64(1)), T.int64(62))" in func.script()
