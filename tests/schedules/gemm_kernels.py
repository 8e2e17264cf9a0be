"""GEMM kernels alone, built as the CPU pipeline builds them, for the schedules.cpu tests:
`dense_kernel` on a GemmPath (isa.PATHS), `check_dense` against numpy's int64 product, and the
helpers to build, call and fill them."""

from __future__ import annotations

import functools

import numpy as np
import tvm
from ivit_tvm.schedules.cpu import dense, packing
from ivit_tvm.schedules.cpu.isa import GemmPath
from tvm import te, tirx
from tvm.s_tir import Schedule

I64 = functools.partial(tirx.IntImm, "int64")


def build(func: tirx.PrimFunc, schedule, target):
    sch = Schedule(func.with_attr("global_symbol", "main"))
    schedule(sch)
    return tvm.compile(sch.mod, target=target.target)


def call(ex, *arrays, out_shape, out_dtype="int32") -> np.ndarray:
    args = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays]
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype))
    ex(*args, out)
    return out.numpy()


def int_inputs(kind: str, shape, dtype: str, seed: int) -> np.ndarray:
    info = np.iinfo(dtype)
    if kind == "min":
        return np.full(shape, info.min, dtype)
    if kind == "max":
        return np.full(shape, info.max, dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


@functools.cache
def dense_kernel(tokens: int, k: int, n: int, path: GemmPath, target):
    """The packed dense as the pipeline builds it on `path` (isa.PATHS) for `target`."""
    group, dtype = path.group, path.weight_dtype
    x = te.placeholder((tirx.Var("batch", "int64"), I64(tokens), I64(k)), "int8", name="x")
    packed = te.placeholder((-(-n // 16), -(-k // group), 16, group), dtype, name="packed")
    corr = te.placeholder((-(-n // 16) * 16,), "int32", name="corr") if path.shift else None
    out = dense.packed_dense(x, packed, corr, n, path.vector_bytes)
    func = te.create_prim_func([x, packed, *([corr] if path.shift else []), out])
    return build(func, lambda sch: dense.schedule_packed_dense(sch, path), target)


DENSE_CASES = [  # (batch, tokens, K, N): ragged rows, K not a multiple of 4, N not of 16
    (2, 197, 384, 1000), (3, 49, 96, 10), (1, 1, 30, 48), (1, 17, 7, 33),
]


def check_dense(path: GemmPath, target, kind: str) -> None:
    for case, (batch, tokens, k, n) in enumerate(DENSE_CASES):
        ex = dense_kernel(tokens, k, n, path, target)
        x = int_inputs(kind, (batch, tokens, k), "int8", seed=case)
        weight = int_inputs("random" if kind == "random" else "min", (n, k), "int8", seed=case + 9)
        packed, corr = packing.pack_weight(weight, path.group, path.weight_dtype)
        weights = (packed,) if corr is None else (packed, corr)
        got = call(ex, x, *weights, out_shape=(batch, tokens, n))
        exact = x.astype(np.int64) @ weight.T.astype(np.int64)
        np.testing.assert_array_equal(got, exact, err_msg=str(case))
