"""The tensor-core int8 GEMM (schedules/cuda/mma.py) checked without a GPU: its CPU twin is
bit-exact against the PyTorch integer reference on ragged DeiT-S shapes, a wrong tile offset
makes the twin fail, and nvcc compiles it to IMMA / LDSM / LDGSTS without register spills."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import tvm
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.cuda import inspect as kernels
from ivit_tvm.schedules.cuda import mma, mma_tiles, twin
from ivit_tvm.schedules.cuda.build import TIR_PIPELINE
from ivit_tvm.schedules.cuda.gemm import IntegerGemm, gemm_choices, match_integer_gemm
from ivit_tvm.schedules.cuda.pipeline import schedule_module
from ivit_tvm.schedules.cuda.toolkit import compile_cubin_verbose, find_cuda_tool
from ivit_tvm.schedules.tir_rewrite import map_func, substitute
from support import DEIT as DEIT_CONFIG
from support import deit_and_images
from tvm import s_tir, te, tirx

from ivit_tvm.frontend import from_model
from ivit_tvm.ops.matmul import (
    integer_batch_matmul,
    integer_batch_matmul_high,
    integer_batch_matmul_low_add,
    integer_dense,
)
from ivit_tvm.ops.requantize import requantize, requantize_add
from ivit_tvm.quant import functional

# DeiT-S GEMMs as (N, K): qkv 384 -> 1152, proj 384 -> 384, fc1 384 -> 1536, fc2 1536 -> 384.
DEIT_S = [(384, 384), (1152, 384), (1536, 384), (384, 1536)]
# Swin-T's first patch merging (28 x 28 tokens, 4 x 96 -> 192, no bias, int32 multiplier): on
# sm_90 ptxas spilled it at 128 registers until mma.declare_register_budget.
SWIN_T_MERGE = "swin_t_merge_784x192x384"
SHARED_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}  # bytes per block


# ---- the GEMMs under test ---------------------------------------------------------------
def _i64(*values):
    return [tirx.IntImm("int64", v) for v in values]


def dense_requantize(tokens: int, n: int, k: int, residual: bool = False, bias: bool = True,
                     multiplier_dtype: str = "int64") -> tirx.PrimFunc:
    """x (batch, tokens, K) int8 . w (N, K)^T [+ bias] -> requantize to int8 [-> requantize_add
    with a residual], batch symbolic: the frontend's fused dense as a standalone PrimFunc."""
    batch = tirx.Var("batch", "int64")
    tokens, n, k = _i64(tokens, n, k)
    x = te.placeholder((batch, tokens, k), "int8", name="x")
    w = te.placeholder((n, k), "int8", name="w")
    bias_q = te.placeholder((n,), "int32", name="bias") if bias else None
    multiplier = te.placeholder((n,), multiplier_dtype, name="multiplier")
    shift = te.placeholder((n,), "int64", name="shift")
    out = requantize(integer_dense(x, w, bias_q), multiplier, shift, 8)  # (batch, tokens, N)
    inputs = [x, w, *([bias_q] if bias else []), multiplier, shift]
    if residual:
        skip = te.placeholder((batch, tokens, n), "int8", name="skip")
        out = requantize_add(out, multiplier, shift, skip, 3, 2, 8)
        inputs.append(skip)
    return te.create_prim_func([*inputs, out])


def gemm_inputs(batch: int, tokens: int, n: int, k: int, kind: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if kind == "extreme":  # -128 / 127 only: the largest products and sums
        x = rng.choice(np.array([-128, 127], np.int8), (batch, tokens, k))
        w = rng.choice(np.array([-128, 127], np.int8), (n, k))
    else:
        x = rng.integers(-128, 128, (batch, tokens, k), dtype=np.int8)
        w = rng.integers(-128, 128, (n, k), dtype=np.int8)
    return {
        "x": x, "w": w,
        "bias": rng.integers(-2**24, 2**24, n, dtype=np.int32),
        "multiplier": rng.integers(1, 2**15, n).astype(np.int64),
        "shift": rng.integers(16, 34, n).astype(np.int64),
        "skip": rng.integers(-128, 128, (batch, tokens, n), dtype=np.int8),
    }


def reference(inputs: dict, residual: bool) -> np.ndarray:
    """The PyTorch integer reference (ivit_tvm.quant.functional)."""
    t = {name: torch.from_numpy(value) for name, value in inputs.items()}
    acc = functional.integer_linear(t["x"], t["w"], t["bias"])  # (B, T, N) int32
    out = functional.requantize(acc, t["multiplier"], t["shift"], 8)
    if residual:
        out = functional.requantize_add(out, t["multiplier"], t["shift"], t["skip"], 3, 2, 8)
    return out.numpy()


def scheduled(func: tirx.PrimFunc, tile: mma_tiles.MmaTile, tensorize: bool) -> tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    return mma.mma_func(sch, match_integer_gemm(sch).block, tile, tensorize=tensorize)


def run_twin(lib, inputs: dict, residual: bool) -> np.ndarray:
    names = ["x", "w", "bias", "multiplier", "shift"] + (["skip"] if residual else [])
    batch, tokens, _ = inputs["x"].shape
    out = np.zeros((batch, tokens, inputs["w"].shape[0]), np.int8)
    args = [tvm.runtime.tensor(inputs[name]) for name in names] + [tvm.runtime.tensor(out)]
    lib["twin"](*args)
    return args[-1].numpy()


# ---- tiles ------------------------------------------------------------------------------
def test_tile_table_fits_static_shared_memory_and_whole_mma_tiles():
    for tile in mma_tiles.TILE_TABLE:
        assert tile.shared_bytes <= mma_tiles.STATIC_SHARED_LIMIT
        assert tile.warp_m % 16 == 0 and tile.warp_n % 16 == 0 and tile.k_tile % 32 == 0


def test_tile_choice_by_shape():
    assert mma_tiles.choose_tile(None, 1536, 384).name.startswith("128x128")
    assert mma_tiles.choose_tile(None, 576, 192).name.startswith("128x64")  # 576 = 9 x 64
    assert mma_tiles.choose_tile(None, 10, 192) is None  # the classifier head: dp4a
    assert mma_tiles.choose_tile(None, 384, 48) is None  # K not a multiple of 32
    small = mma_tiles.choose_tile(50, 384, 384)  # 50 rows: a 128-row tile wastes 61%
    assert small.block_m < 128
    with pytest.raises(ValueError, match="16x16"):
        mma_tiles.MmaTile(64, 48, 2, 2)


# ---- the CPU twin -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twins():
    """(tokens, n, k, residual, tile) -> the twin library, built once per module."""
    cache = {}

    def get(tokens, n, k, residual=False, tile=None):
        tile = tile or mma_tiles.choose_tile(None, n, k)
        key = (tokens, n, k, residual, tile)
        if key not in cache:
            func = scheduled(dense_requantize(tokens, n, k, residual), tile, tensorize=False)
            cache[key] = twin.build_twin(func)
        return cache[key]

    return get


@pytest.mark.parametrize(("n", "k"), DEIT_S)
@pytest.mark.parametrize("tokens", [197, 50])  # M = 197, 3 x 197, 50, 3 x 50: no tile divides
def test_twin_is_bit_exact_on_ragged_deit_s_gemms(twins, tokens, n, k):
    lib = twins(tokens, n, k)
    for batch, kind in ((1, "random"), (3, "extreme")):
        inputs = gemm_inputs(batch, tokens, n, k, kind, seed=batch)
        np.testing.assert_array_equal(run_twin(lib, inputs, False), reference(inputs, False))


TILE_VARIANTS = [mma_tiles.MmaTile(64, 64, 2, 2), mma_tiles.MmaTile(32, 32, 1, 1, 32),
                 mma_tiles.MmaTile(128, 64, 2, 2, stages=3)]


@pytest.mark.parametrize("tile", TILE_VARIANTS, ids=lambda t: t.name)
def test_twin_is_bit_exact_for_every_tile_shape_with_a_residual_epilogue(twins, tile):
    lib = twins(197, 384, 384, residual=True, tile=tile)
    inputs = gemm_inputs(2, 197, 384, 384, "random", seed=7)
    np.testing.assert_array_equal(run_twin(lib, inputs, True), reference(inputs, True))


def test_twin_is_bit_exact_when_tokens_are_a_multiple_of_16(twins):
    lib = twins(16, 384, 384)  # the patch embedding of 32x32 images: 4 x 4 patches
    inputs = gemm_inputs(3, 16, 384, 384, "random", seed=3)
    np.testing.assert_array_equal(run_twin(lib, inputs, False), reference(inputs, False))


# ---- attention's q @ k^T: batched (S = batch x heads), N = tokens padded like M ---------------
# (heads, tokens, head_dim): DeiT-S (197 tokens, 64), Swin-T's 7x7 windows (49, 32), 16 tokens.
ATTENTION = [(6, 197, 64), (3, 49, 32), (2, 16, 64)]
QK_MULTIPLIER, QK_SHIFT = 1282548807, 38  # a DeiT-S attention logit requantize


def qk_requantize(heads: int, tokens: int, head_dim: int) -> tirx.PrimFunc:
    """q, k (batch, heads, tokens, head_dim) int8 -> q @ k^T requantized to int8, batch
    symbolic: the frontend's fused attention-logit kernel as a standalone PrimFunc."""
    batch = tirx.Var("batch", "int64")
    shape = (batch, *_i64(heads, tokens, head_dim))
    q = te.placeholder(shape, "int8", name="q")
    k = te.placeholder(shape, "int8", name="k")
    acc = integer_batch_matmul(q, k, transpose_b=True)  # (batch, heads, tokens, tokens) int32
    return te.create_prim_func([q, k, requantize(acc, QK_MULTIPLIER, QK_SHIFT, 8)])


def qk_inputs(batch: int, heads: int, tokens: int, head_dim: int, kind: str,
              seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = (batch, heads, tokens, head_dim)
    if kind == "extreme":
        return {name: rng.choice(np.array([-128, 127], np.int8), shape) for name in "qk"}
    return {name: rng.integers(-128, 128, shape, dtype=np.int8) for name in "qk"}


def qk_reference(inputs: dict) -> np.ndarray:
    q, k = (torch.from_numpy(inputs[name]) for name in "qk")
    acc = functional.integer_matmul(q, k.transpose(-1, -2))  # (B, H, T, T) int32
    return functional.requantize(acc, QK_MULTIPLIER, QK_SHIFT, 8).numpy()


def run_qk_twin(lib, inputs: dict) -> np.ndarray:
    batch, heads, tokens, _ = inputs["q"].shape
    out = np.zeros((batch, heads, tokens, tokens), np.int8)
    args = [tvm.runtime.tensor(inputs["q"]), tvm.runtime.tensor(inputs["k"]),
            tvm.runtime.tensor(out)]
    lib["twin"](*args)
    return args[-1].numpy()


@pytest.mark.parametrize(("heads", "tokens", "head_dim"), ATTENTION)
def test_qk_twin_is_bit_exact_with_padded_rows_and_columns(heads, tokens, head_dim):
    func = qk_requantize(heads, tokens, head_dim)
    sch = s_tir.Schedule(func)
    match = match_integer_gemm(sch)
    plan = mma.plan_mma(func, sch.get(match.block).name_hint, match.dtypes, match.k_contiguous,
                        tvm.target.Target({"kind": "cuda", "arch": "sm_80"}),
                        row_bytes=match.last_extent)
    assert plan is not None, "q @ k^T should run on tensor cores"
    assert (plan.shape.m, plan.shape.n, plan.shape.k) == (tokens, tokens, head_dim)
    assert plan.fetches == (mma.Fetch.VECTOR, mma.Fetch.VECTOR)  # 16-byte cp.async rows
    lib = twin.build_twin(scheduled(func, plan.tile, tensorize=False))
    for batch, kind in ((1, "random"), (3, "extreme")):
        inputs = qk_inputs(batch, heads, tokens, head_dim, kind, seed=batch)
        np.testing.assert_array_equal(run_qk_twin(lib, inputs), qk_reference(inputs))


def test_qk_twin_fails_when_k_rows_are_shifted():
    tile = mma_tiles.MmaTile(32, 32, 1, 1, k_tile=32)
    good = scheduled(qk_requantize(2, 49, 64), tile, tensorize=False)
    inputs = qk_inputs(2, 2, 49, 64, "random", seed=11)
    np.testing.assert_array_equal(run_qk_twin(twin.build_twin(good), inputs),
                                  qk_reference(inputs))
    bad = twin.build_twin(shift_operand_rows(twin.cpu_twin(good), "k", 1, axis=2))
    assert not np.array_equal(run_qk_twin(bad, inputs), qk_reference(inputs))


# ---- attention's probs @ V: K = tokens padded with zeros, V (K, N) fetched row by row ------
SM_80 = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})


def pv_funcs(heads: int, tokens: int, head_dim: int, probs_dtype: str) -> list[tirx.PrimFunc]:
    """probs (batch, heads, tokens, tokens) @ v (batch, heads, tokens, head_dim) int8 -> int32
    as the frontend emits it: one int8 x int8 GEMM for 8-bit probabilities; for 16-bit ones on
    tensor cores the high-byte GEMM, then the low-byte GEMM adding 256 x the first."""
    batch = tirx.Var("batch", "int64")
    probs = te.placeholder((batch, *_i64(heads, tokens, tokens)), probs_dtype, name="probs")
    v = te.placeholder((batch, *_i64(heads, tokens, head_dim)), "int8", name="v")
    if probs_dtype == "int8":
        return [te.create_prim_func([probs, v, integer_batch_matmul(probs, v)])]
    high = te.placeholder((batch, *_i64(heads, tokens, head_dim)), "int32", name="high")
    return [te.create_prim_func([probs, v, integer_batch_matmul_high(probs, v)]),
            te.create_prim_func([probs, v, high, integer_batch_matmul_low_add(probs, v, high)])]


def pv_inputs(batch, heads, tokens, head_dim, probs_dtype, kind, seed) -> dict:
    rng = np.random.default_rng(seed)
    info = np.iinfo(probs_dtype)
    shape = (batch, heads, tokens, tokens)
    if kind == "extreme":  # the dtype's extremes: every byte of the int16 split at its ends
        ends = [info.min, info.max, -1] + ([255, 256] if probs_dtype == "int16" else [])
        probs = rng.choice(np.array(ends, probs_dtype), shape)
        v = rng.choice(np.array([-128, 127], np.int8), (batch, heads, tokens, head_dim))
    else:
        probs = rng.integers(info.min, info.max + 1, shape, dtype=probs_dtype)
        v = rng.integers(-128, 128, (batch, heads, tokens, head_dim), dtype=np.int8)
    return {"probs": probs, "v": v}


def scheduled_plan(func: tirx.PrimFunc, tensorize: bool = False) -> tuple:
    sch = s_tir.Schedule(func)
    match = match_integer_gemm(sch)
    plan = mma.plan_mma(func, sch.get(match.block).name_hint, match.dtypes,
                        match.k_contiguous, SM_80, row_bytes=match.last_extent)
    assert plan is not None, "probs @ V should run on tensor cores"
    return plan, mma.mma_func(sch, match.block, plan.tile, tensorize, fetches=plan.fetches)


def run_pv_twins(libs, inputs: dict) -> np.ndarray:
    batch, heads, tokens, _ = inputs["probs"].shape
    shape = (batch, heads, tokens, inputs["v"].shape[-1])
    args = [tvm.runtime.tensor(inputs["probs"]), tvm.runtime.tensor(inputs["v"])]
    out = tvm.runtime.tensor(np.zeros(shape, np.int32))
    libs[0]["twin"](*args, out)
    if len(libs) == 2:  # the low-byte GEMM adds 256 x the high-byte one
        high, out = out, tvm.runtime.tensor(np.zeros(shape, np.int32))
        libs[1]["twin"](*args, high, out)
    return out.numpy()


def pv_reference(inputs: dict) -> np.ndarray:
    return functional.integer_matmul(torch.from_numpy(inputs["probs"]),
                                     torch.from_numpy(inputs["v"])).numpy()


@pytest.mark.parametrize("probs_dtype", ["int8", "int16"])
@pytest.mark.parametrize(("heads", "tokens", "head_dim"), ATTENTION)
def test_pv_twin_is_bit_exact_with_padded_k(heads, tokens, head_dim, probs_dtype):
    libs = []
    for func in pv_funcs(heads, tokens, head_dim, probs_dtype):
        plan, scheduled_func = scheduled_plan(func)
        assert plan.fetches[1] is mma.Fetch.ALONG_ROWS  # V is (K, N): read along N
        libs.append(twin.build_twin(scheduled_func))
    for batch, kind in ((1, "random"), (3, "extreme")):
        inputs = pv_inputs(batch, heads, tokens, head_dim, probs_dtype, kind, seed=batch)
        np.testing.assert_array_equal(run_pv_twins(libs, inputs), pv_reference(inputs))


def clamp_every_padded_read(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """A wrong padding: every zero-filled shared-memory fetch reads its operand with each
    index clamped into bounds instead (padded K then repeats the last token's values)."""

    def post(node):
        if not (isinstance(node, s_tir.SBlock) and isinstance(node.body, tirx.BufferStore)
                and node.name_hint.endswith("_shared")):
            return node
        store = node.body
        value = store.value
        if not (isinstance(value, tvm.ir.Call)
                and getattr(value.op, "name", "") == "prim.if_then_else"):
            return node
        load = value.args[1]
        clamped = tirx.BufferLoad(load.source, [
            tirx.Min(index, extent - 1) for index, extent in zip(load.indices,
                                                                  load.source.shape, strict=True)])
        return s_tir.SBlock(list(node.iter_vars), list(node.reads), list(node.writes),
                            node.name_hint, tirx.BufferStore(store.buffer, clamped,
                                                             list(store.indices)))

    return map_func(func, post)


def test_pv_twin_fails_when_padded_k_is_not_zero():
    _, good = scheduled_plan(pv_funcs(2, 49, 32, "int8")[0])
    inputs = pv_inputs(1, 2, 49, 32, "int8", "random", seed=4)
    np.testing.assert_array_equal(run_pv_twins([twin.build_twin(good)], inputs),
                                  pv_reference(inputs))
    bad = twin.build_twin(clamp_every_padded_read(twin.cpu_twin(good)))
    assert not np.array_equal(run_pv_twins([bad], inputs), pv_reference(inputs))


def test_pv_kernels_compile_to_s8_and_u8_mma():
    """8-bit probabilities: mma .s8.s8; 16-bit: the high byte on .s8.s8, the low byte on
    .u8.s8 (nvcc, sm_80); V is not copied with cp.async (it is transposed on the way)."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    functions = {}
    for dtype in ("int8", "int16"):
        for index, func in enumerate(pv_funcs(6, 197, 64, dtype)):
            name = f"pv_{dtype}_{index}"
            functions[name] = scheduled_plan(func, tensorize=True)[1].with_attr(
                "global_symbol", name)
    with tvm.transform.PassContext(config={"tirx.use_async_copy": 1}):
        built = tvm.compile(tvm.IRModule(functions), target=SM_80, tir_pipeline=TIR_PIPELINE)
    _, ptx, log = compile_cubin_verbose(kernels.cuda_source(built), "sm_80")
    bodies = kernels.ptx_kernels(ptx)
    unit = {"pv_int8_0": ".s8.s8.s32", "pv_int16_0": ".s8.s8.s32", "pv_int16_1": ".u8.s8.s32"}
    for name, mma_type in unit.items():
        body = bodies[f"{name}_kernel"]
        assert f"mma.sync.aligned.m16n8k32.row.col.s32{mma_type}" in body, name
        assert "dp4a" not in body
    for name, usage in kernels.parse_ptxas_resources(log).items():
        assert usage.spill_store_bytes == 0 and usage.spill_load_bytes == 0, (name, usage)
        assert usage.stack_bytes == 0, (name, usage)


def test_attention_tiles_rank_padding_of_both_axes():
    deit = mma_tiles.choose_tile(197, 197, 64, ragged_n=True)
    assert deit is not None and deit.name.startswith("32x32")  # 197 -> 224 wastes least
    swin = mma_tiles.choose_tile(49, 49, 32, ragged_n=True)
    assert swin is not None and swin.k_tile == 32 and swin.block_m == 64  # 49 -> 64 either way
    assert mma_tiles.choose_tile(197, 197, 64) is None  # dense layers keep whole N tiles


def shift_operand_rows(func: tirx.PrimFunc, buffer_name: str, by: int,
                       axis: int = 0) -> tirx.PrimFunc:
    """A wrong tile offset: the shared-memory copy of `buffer_name` reads rows (its `axis`)
    shifted by `by` (modulo the row count, so every read stays in bounds)."""

    def post(node):
        if not (isinstance(node, s_tir.SBlock) and isinstance(node.body, tirx.BufferStore)):
            return node
        store = node.body
        if store.buffer.scope() != "global" or not node.name_hint.endswith("_shared"):
            return node
        load = store.value
        if not (isinstance(load, tvm.ir.TensorLoad) and load.source.name == buffer_name):
            return node
        indices = list(load.indices)
        indices[axis] = tirx.FloorMod(indices[axis] + by, load.source.shape[axis])
        shifted = tirx.BufferLoad(load.source, indices)
        return s_tir.SBlock(list(node.iter_vars), list(node.reads), list(node.writes),
                            node.name_hint, tirx.BufferStore(store.buffer, shifted,
                                                             list(store.indices)))

    return map_func(func, post)


def shift_fragment_tile(func: tirx.PrimFunc, by: int) -> tirx.PrimFunc:
    """A wrong tile offset: the A fragment copy (shared -> warp) writes the tile index + `by`."""

    def post(node):
        if not (isinstance(node, s_tir.SBlock) and node.name_hint.endswith("_shared_warp")
                and node.name_hint.startswith("x")):
            return node
        store = node.body
        indices = list(store.indices)
        indices[2] = tirx.FloorMod(indices[2] + by, store.buffer.shape[2])  # the k-step tile
        return s_tir.SBlock(list(node.iter_vars), list(node.reads), list(node.writes),
                            node.name_hint, tirx.BufferStore(store.buffer, store.value, indices))

    return map_func(func, post)


@pytest.mark.parametrize("mutate", [lambda f: shift_operand_rows(f, "w", 16),
                                    lambda f: shift_fragment_tile(f, 1)],
                         ids=["weight-rows+16", "fragment-tile+1"])
def test_a_wrong_tile_offset_fails_the_twin(mutate):
    tile = mma_tiles.MmaTile(64, 64, 2, 2)
    good = scheduled(dense_requantize(50, 128, 128), tile, tensorize=False)
    bad = twin.build_twin(mutate(twin.cpu_twin(good)))
    inputs = gemm_inputs(1, 50, 128, 128, "random", seed=5)
    expected = reference(inputs, False)
    np.testing.assert_array_equal(run_twin(twin.build_twin(good), inputs, False), expected)
    assert not np.array_equal(run_twin(bad, inputs, False), expected)


def test_twin_has_no_thread_bindings_or_gpu_scopes():
    tile = mma_tiles.MmaTile(64, 64, 2, 2)
    func = twin.cpu_twin(scheduled(dense_requantize(50, 128, 128), tile, tensorize=False))
    text = func.script()
    assert "thread_binding" not in text and "software_pipeline" not in text
    assert not re.search(r'scope="(shared|warp|local)', text)


def test_substitute_refuses_what_it_does_not_know():
    x = tirx.Var("x", "int64")
    with pytest.raises(TypeError, match="unsupported expression"):
        substitute(tirx.Select(x > 0, x, x + 1), {x: x})


# ---- the CUDA kernels -------------------------------------------------------------------
def deit_s_cuda_source() -> str:
    """CUDA C of the four DeiT-S dense GEMMs and its q @ k^T (tensorized, 197 tokens,
    symbolic batch) and Swin-T's first patch-merging GEMM, one module."""
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    functions = {}
    for n, k in DEIT_S:
        tile = mma_tiles.choose_tile(None, n, k)
        name = f"gemm_{n}x{k}"
        functions[name] = scheduled(dense_requantize(197, n, k), tile, True).with_attr(
            "global_symbol", name)
    tile = mma_tiles.choose_tile(197, 197, 64, ragged_n=True)
    functions["qk_6x197x64"] = scheduled(qk_requantize(6, 197, 64), tile, True).with_attr(
        "global_symbol", "qk_6x197x64")
    merge = dense_requantize(784, 192, 384, bias=False, multiplier_dtype="int32")
    functions[SWIN_T_MERGE] = scheduled(merge, mma_tiles.choose_tile(None, 192, 384),
                                        True).with_attr("global_symbol", SWIN_T_MERGE)
    with tvm.transform.PassContext(config={"tirx.use_async_copy": 1}):
        built = tvm.compile(tvm.IRModule(functions), target=target, tir_pipeline=TIR_PIPELINE)
    return kernels.cuda_source(built)


@pytest.fixture(scope="module")
def deit_s_source():
    return deit_s_cuda_source()


@pytest.fixture(scope="module", params=["sm_80", "sm_90"])
def compiled(request, deit_s_source):
    """(arch, cubin, PTX, ptxas report) of the DeiT-S GEMMs: one nvcc run per arch."""
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    return (request.param, *compile_cubin_verbose(deit_s_source, request.param))


def test_gemm_ptx_has_s8_mma_ldmatrix_and_cp_async(compiled):
    arch, _, ptx, _ = compiled
    per_kernel = kernels.kernel_instructions(ptx)
    assert len(per_kernel) == len(DEIT_S) + 2, arch
    for name, counts in per_kernel.items():
        assert counts["mma_s8"] > 0, name
        assert counts["ldmatrix"] > 0 and counts["cp_async"] > 0, name
        assert counts["dp4a"] == 0, name
    for n, k in DEIT_S:  # bias, multiplier, shift: one load per column of a lane, not per row
        counts = per_kernel[f"gemm_{n}x{k}_kernel"]
        lane_columns = mma_tiles.choose_tile(None, n, k).warp_n // 4
        assert counts["ld_global"] == 3 * lane_columns, (arch, n, k)
        # the epilogue's int8 column pairs: one char2 store each (device_indexing.py)
        assert counts["st_global_byte"] == 0 and counts["st_global_byte_pair"] > 0, (arch, n, k)


def test_gemm_kernels_do_not_spill_and_fit_shared_memory(compiled):
    arch, _, _, log = compiled
    resources = kernels.parse_ptxas_resources(log)
    assert len(resources) == len(DEIT_S) + 2
    for name, usage in resources.items():
        assert usage.spill_store_bytes == 0 and usage.spill_load_bytes == 0, (name, usage)
        assert usage.stack_bytes == 0, (name, usage)  # fragments in registers (device_indexing.py)
        assert usage.registers <= 255 and 0 < usage.shared_bytes <= SHARED_LIMIT[arch]


def test_gemm_kernels_declare_their_register_budget(deit_s_source):
    """Every GEMM kernel says how many blocks an SM must hold: REGISTERS_PER_THREAD a thread."""
    bounds = re.findall(r"__launch_bounds__\((\d+)(?:, (\d+))?\) (\w+)\(", deit_s_source)
    assert len({name for *_, name in bounds}) == len(DEIT_S) + 2
    for threads, blocks, name in bounds:
        assert blocks, name  # without it ptxas spilled SWIN_T_MERGE on sm_90
        assert int(blocks) * int(threads) * mma.REGISTERS_PER_THREAD == mma.REGISTER_FILE, name


def test_gemm_sass_uses_imma_ldsm_and_ldgsts(compiled):
    arch, cubin, _, log = compiled
    if find_cuda_tool("cuobjdump") is None or find_cuda_tool("nvdisasm") is None:
        pytest.skip("cuobjdump/nvdisasm not found: SASS not read")
    sass = kernels.sass_instructions(cubin)
    assert sorted(sass) == sorted(kernels.parse_ptxas_resources(log))
    for name, counts in sass.items():
        assert counts["IMMA"] > 0 and counts["LDSM"] > 0 and counts["LDGSTS"] > 0, (arch, name)
        assert counts["IDP.4A"] == 0 and counts["HMMA"] == 0, (arch, name)
        # no local memory, no self-shuffles of the accumulators (device_indexing.py)
        assert counts["LDL"] == counts["STL"] == counts["SHFL"] == 0, (arch, name, counts)


# ---- the pipeline chooses ---------------------------------------------------------------
@pytest.fixture(scope="module")
def deit_mod():
    model, _ = deit_and_images()
    return from_model(model).mod


def test_pipeline_puts_dense_on_tensor_cores_on_sm80_and_records_the_tile(deit_mod):
    choices = gemm_choices(schedule_module(deit_mod, make_target("cuda", arch="sm_80").target))
    dense = {row["primfunc"]: row for row in choices if "dense" in row["primfunc"]}
    assert dense and all(row["strategy"] == "mma" for name, row in dense.items()
                         if row["n"] % 32 == 0)
    head = [row for row in dense.values() if row["n"] == 10]  # 10 classes: no tile fits
    assert head and all(row["strategy"] == "dp4a" for row in head)
    attention = [row for row in choices if "batch_matmul" in row["primfunc"]]
    head_dim = DEIT_CONFIG.embed_dim // DEIT_CONFIG.num_heads
    logits = [row for row in attention if row["k"] == head_dim]  # q @ k^T: K = head_dim
    assert logits and all(row["strategy"] == "mma" for row in logits)
    # p @ V (N = head_dim) with int16 probabilities: from_model without byte_products
    assert {row["strategy"] for row in attention if row not in logits} == {"scalar"}
    for row in dense.values():
        if row["strategy"] == "mma":
            tile = next(t for t in mma_tiles.TILE_TABLE if t.name == row["tile"])
            assert row["n"] % tile.block_n == 0 and row["k"] % tile.k_tile == 0


def test_pipeline_keeps_dp4a_below_sm80(deit_mod):
    choices = gemm_choices(schedule_module(deit_mod, make_target("cuda", arch="sm_75").target))
    assert choices and {row["strategy"] for row in choices} <= {"dp4a", "scalar"}


def test_dp4a_strategy_can_be_forced_on_sm80():
    func = dense_requantize(197, 384, 384)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    from ivit_tvm.schedules.cuda.gemm import GEMM_ATTR, GemmStrategy

    with target:
        forced = IntegerGemm(GemmStrategy.DP4A).apply(func, target, False).mod["main"]
        auto = IntegerGemm().apply(func, target, False).mod["main"]
    assert str(forced.attrs[GEMM_ATTR]["strategy"]) == "dp4a"
    assert str(auto.attrs[GEMM_ATTR]["strategy"]) == "mma"


def test_build_records_the_gemm_choices(deit_mod):
    """What the artifact's manifest can list: build_cuda(..., gemm_record=[]) (the export
    worker returns the same list as ArtifactInfo.gemms)."""
    from ivit_tvm.schedules.cuda.build import build_cuda

    record: list[dict] = []
    source = kernels.cuda_source(build_cuda(deit_mod, make_target("cuda", arch="sm_90"),
                                            gemm_record=record))
    assert record and {"primfunc", "strategy", "tile"} <= set(record[0])
    for row in record:
        assert f"{row['primfunc']}_kernel" in source
    assert any(row["strategy"] == "mma" for row in record)
