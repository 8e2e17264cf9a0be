"""device_indexing.simplify_device_indexing: a division or modulo folds only where its value
is one constant (proved with the thread extents, constant loop ranges and let values), a warp
shuffle goes only where the source lane is the caller's own, and `x // c < n` becomes
`x < n * c`; pair_adjacent_stores merges two int8/int16 stores to buf[i], buf[i + 1] (i even,
same condition, values not reading buf) into one vector store. The rewritten functions
compute what the originals do (run on llvm over every loop value, and a range of n); the CUDA
kernels they are for keep their fragments in registers and store column pairs as char2
(tests/schedules/test_cuda_mma.py, test_cuda_build.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from ivit_tvm.schedules.cuda.device_indexing import (
    DIVISIONS,
    WARP_SHUFFLE,
    pair_adjacent_stores,
    simplify_device_indexing,
)
from tvm import tirx
from tvm.script import tirx as T


def count(node, kinds) -> int:
    """Nodes of `kinds` in a function's body or in a statement."""
    found = []
    body = node.body if isinstance(node, tirx.PrimFunc) else node
    tvm_ffi.structural_walk(body, [(kind, found.append) for kind in kinds], order="post")
    return len(found)


def shuffles(func: tirx.PrimFunc) -> int:
    calls = []
    tvm_ffi.structural_walk(func.body, [(tvm.ir.Call, calls.append)], order="post")
    return sum(call.op.same_as(WARP_SHUFFLE) for call in calls)


# ---- divisions ---------------------------------------------------------------------------
def lane_quotient(extent: int) -> tirx.PrimFunc:
    """An mma accumulator's local index after LowerWarpMemory: tile 4, element 4."""

    @T.prim_func
    def func(a: T.Buffer((64,), "int64")):
        tx = T.launch_thread("threadIdx.x", T.int64(extent))
        c: T.let[T.int64] = tx * T.int64(8) + T.int64(1028)
        a[tx] = T.Div(c, T.int64(256)) * T.int64(8) + T.truncmod(c, T.int64(8))

    return func


def test_quotient_of_a_warp_lane_folds_to_the_tile():
    folded = simplify_device_indexing(lane_quotient(32))
    assert count(folded, DIVISIONS) == 0
    stores = []
    tvm_ffi.structural_walk(folded.body, [(tirx.BufferStore, stores.append)], order="post")
    assert int(tvm.sym.Analyzer().simplify(stores[0].value)) == 4 * 8 + 4


def test_quotient_over_two_warps_is_kept():
    """64 lanes: tx * 8 + 1028 spans [1028, 1532], quotient 4 or 5."""
    assert count(simplify_device_indexing(lane_quotient(64)), (tirx.Div,)) == 1


@T.prim_func
def quotients(out: T.Buffer((32, 8), "int64")):
    for i in range(32):
        c: T.let[T.int64] = T.int64(i) * T.int64(8) + T.int64(1028)
        d: T.let[T.int64] = T.int64(i) * T.int64(8) - T.int64(1030)
        out[i, 0] = T.Div(c, T.int64(256))  # 4: folds
        out[i, 1] = T.floordiv(c, T.int64(256))  # 4: folds
        out[i, 2] = T.truncmod(c, T.int64(8))  # 4: folds
        out[i, 3] = T.floormod(c, T.int64(512))  # 4..252: kept
        out[i, 4] = T.Div(d, T.int64(256))  # -1030..-782: -4 or -3, kept
        out[i, 5] = T.floordiv(d + T.int64(1030), T.int64(512))  # 0: folds
        out[i, 6] = T.Div(c, T.int64(1024))  # 1: folds
        out[i, 7] = T.floordiv(c, T.int64(128))  # 8..9: kept


def run(func: tirx.PrimFunc) -> np.ndarray:
    ex = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((32, 8), "int64"))
    ex["main"](out)
    return out.numpy()


def test_folded_divisions_compute_what_the_originals_do():
    folded = simplify_device_indexing(quotients)
    assert count(quotients, DIVISIONS) == 8 and count(folded, DIVISIONS) == 3
    expected = run(quotients)
    np.testing.assert_array_equal(run(folded), expected)
    assert set(expected[:, 4]) == {-4, -3}  # the kept ones do vary


# ---- shuffles ----------------------------------------------------------------------------
def shuffle_from(lane_offset: int, extent: int = 32, width: int = 32) -> tirx.PrimFunc:
    @T.prim_func
    def func(a: T.Buffer((64,), "int32"), b: T.Buffer((64,), "int32")):
        tx = T.launch_thread("threadIdx.x", T.int64(extent))
        b[tx] = T.tvm_warp_shuffle(T.tvm_warp_activemask(), a[tx],
                                   T.Cast("int32", tx) + lane_offset, width, 32)

    return func


def test_shuffle_from_own_lane_is_the_value():
    simplified = simplify_device_indexing(shuffle_from(0))
    assert shuffles(simplified) == 0
    assert "b[tx] = a[tx]" in simplified.script()


def test_shuffle_from_own_lane_over_two_warps_is_the_value():
    assert shuffles(simplify_device_indexing(shuffle_from(0, extent=64))) == 0


@pytest.mark.parametrize("lane_offset, extent, width", [
    (1, 32, 32),  # another lane
    (0, 16, 32),  # threadIdx.x of 16: lanes 16..31 are threadIdx.y's next row
    (0, 32, 16),  # a 16-wide shuffle
])
def test_other_shuffles_are_kept(lane_offset, extent, width):
    assert shuffles(simplify_device_indexing(shuffle_from(lane_offset, extent, width))) == 1


# ---- row guards --------------------------------------------------------------------------
@T.prim_func
def guards(n: T.int64, out: T.Buffer((64, 4), "int32")):
    for i in range(64):
        q: T.let[T.int64] = T.floordiv(T.int64(i) * T.int64(3) - T.int64(50), T.int64(9))
        out[i, 3] = T.Select(q < n, 1, 0)  # the quotient in a let, as CSE leaves it
        out[i, 0] = T.Select(T.floordiv(T.int64(i) * T.int64(5) - T.int64(100), T.int64(7)) < n,
                             1, 0)
        out[i, 1] = T.Select(T.Div(T.int64(i) * T.int64(5), T.int64(7)) < n, 1, 0)
        out[i, 2] = T.Select(T.Div(T.int64(i) * T.int64(5) - T.int64(100), T.int64(7)) < n,
                             1, 0)  # may be negative: truncated division kept


def run_guards(func: tirx.PrimFunc, n: int) -> np.ndarray:
    ex = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    out = tvm.runtime.tensor(np.zeros((64, 4), "int32"))
    ex["main"](n, out)
    return out.numpy()


def test_row_guards_compare_without_dividing():
    rewritten = simplify_device_indexing(guards)
    lts = []
    tvm_ffi.structural_walk(rewritten.body, [(tirx.LT, lts.append)], order="post")
    divided = [lt for lt in lts if count(tirx.Evaluate(lt), (tirx.FloorDiv, tirx.Div))
               or isinstance(lt.a, tirx.Var)]
    assert len(lts) == 4 and len(divided) == 1  # only the truncated division of x < 0
    for n in (-20, -15, -14, -1, 0, 1, 7, 32, 33, 100):
        np.testing.assert_array_equal(run_guards(rewritten, n), run_guards(guards, n), str(n))


@T.prim_func
def guards_near_overflow(out: T.Buffer((64,), "int32")):
    for i in range(64):
        out[i] = T.Select(T.floordiv(i * 5, 7) < 2**31 // 4, 1, 0)  # 7 * 2**29 overflows int32


def test_row_guard_whose_product_would_overflow_is_kept():
    assert count(simplify_device_indexing(guards_near_overflow), (tirx.FloorDiv,)) == 1


# ---- paired stores -----------------------------------------------------------------------
def pair_func(first: int, second: int, second_limit: int = 0, dtype: str = "int8",
              read_out: bool = False) -> tirx.PrimFunc:
    """Per i < 16: if i < n: out[2i + first] = a[i] ...; if i < n + second_limit:
    out[2i + second] = a[i] + 1 (or out[0] + 1 with read_out)."""

    @T.prim_func
    def func(n: T.int32, a: T.Buffer((16,), "int32"), out: T.Buffer((40,), dtype)):
        for i in range(16):
            if i < n:
                out[i * 2 + first] = T.Cast(dtype, a[i] >> 1)
            if i < n + second_limit:
                c: T.let[T.int32] = a[i] * 3
                if read_out:
                    out[i * 2 + second] = out[0] + T.Cast(dtype, c)
                else:
                    out[i * 2 + second] = T.Cast(dtype, c + 1)

    return func


def vector_stores(func: tirx.PrimFunc) -> int:
    stores = []
    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, stores.append)], order="post")
    return sum(isinstance(store.indices[0], tirx.Ramp) for store in stores)


def run_pair(func: tirx.PrimFunc, n: int, dtype: str) -> np.ndarray:
    ex = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    a = np.arange(16, dtype="int32") * 37 - 300
    out = tvm.runtime.tensor(np.full((40,), 5, dtype))
    ex["main"](n, tvm.runtime.tensor(a), out)
    return out.numpy()


@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_adjacent_stores_under_one_condition_become_one_vector_store(dtype):
    func = pair_func(0, 1, dtype=dtype)
    paired = pair_adjacent_stores(func)
    assert vector_stores(func) == 0 and vector_stores(paired) == 1
    for n in (-1, 0, 5, 16):
        np.testing.assert_array_equal(run_pair(paired, n, dtype), run_pair(func, n, dtype))


@pytest.mark.parametrize("kwargs", [
    dict(first=1, second=2),  # odd first index: a 2-byte store would be misaligned
    dict(first=0, second=2),  # not adjacent
    dict(first=0, second=1, second_limit=1),  # different conditions
    dict(first=0, second=1, dtype="int32"),  # not a narrow element
    dict(first=0, second=1, read_out=True),  # the second value reads the buffer
], ids=["odd", "gap", "condition", "int32", "reads"])
def test_other_store_pairs_are_kept(kwargs):
    func = pair_func(**kwargs)
    assert vector_stores(pair_adjacent_stores(func)) == 0
