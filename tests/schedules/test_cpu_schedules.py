"""schedules.cpu: the scheduled llvm build stays bit-exact, and its GEMMs use VNNI when the CPU
has it. Whole reduced models against the PyTorch integer reference (one artifact, batch 1 and
3); the GEMM kernels alone on random and extreme int8/int16 inputs with ragged shapes, on the
VNNI path and on the vectorized fallback (the AVX2 and AVX-VNNI paths: test_cpu_avx2.py); the
division rewrite on its exactness bound."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import numpy as np
import pytest
import tvm
from gemm_kernels import I64, build, call, check_dense, dense_kernel, int_inputs
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu import matmul
from ivit_tvm.schedules.cpu.division import rewrite_divisions
from ivit_tvm.schedules.cpu.isa import PATHS, GemmPath
from ivit_tvm.schedules.cpu.pipeline import cpu_pipeline
from ivit_tvm.schedules.targets import TargetInfo
from support import DEIT, SWIN, images, quantized
from tvm import relax, te, tirx
from tvm.target import codegen

from ivit_tvm.frontend import from_model
from relay_passes import integer_pipeline

LLVM = get_backend("llvm")
HOST = LLVM.resolve(tvm.target.Target(
    {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2}
))
AVX2_ONLY = LLVM.resolve(tvm.target.Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2}))
LOOP = GemmPath("generic", 32, 1)  # the vectorized loop, sized for AVX2 registers
# the same CPU with its GEMMs forced onto the loops (isa "generic"; test_cpu_avx2: vpmaddwd)
LOOP_AVX2 = TargetInfo(AVX2_ONLY.target, dataclasses.replace(AVX2_ONLY.caps, isa="generic"))
needs_vnni = pytest.mark.skipif(not HOST.caps.vnni, reason="this CPU has no AVX512-VNNI")
needs_avx2 = pytest.mark.skipif(HOST.caps.vector_bytes < 32, reason="this CPU has no AVX2")


@functools.cache
def compiled(config, target):
    """(VM, schedule warnings) of a reduced model built with cpu_pipeline, symbolic batch."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = tvm.compile(from_model(quantized(config)).mod, target=target.target,
                         relax_pipeline=cpu_pipeline(target))
    messages = [str(w.message) for w in caught if "schedules.cpu" in str(w.message)]
    return relax.VirtualMachine(ex, tvm.cpu()), ex, messages


def run_model(config, target, batch: int):
    vm = compiled(config, target)[0]
    x = images(config, seed=batch, batch=batch)
    logits = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    return logits, quantized(config).forward_integer(x)[0].numpy()


# ---- whole models ----------------------------------------------------------------------------
@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
@pytest.mark.parametrize("batch", [1, 3])
def test_scheduled_model_matches_integer_reference(config, batch):
    logits, reference = run_model(config, HOST, batch)
    np.testing.assert_array_equal(logits, reference)


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_every_kernel_gets_a_schedule(config):
    assert compiled(config, HOST)[2] == []


def test_graph_passes_then_scheduled_model_matches_integer_reference():
    """The compile driver's order: relay_passes (GEMM+requantize fused) first."""
    model = quantized(DEIT)
    mod = integer_pipeline()(from_model(model).mod)
    ex = tvm.compile(mod, target=HOST.target, relax_pipeline=cpu_pipeline(HOST))
    x = images(DEIT, seed=11, batch=2)
    logits = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_array_equal(logits, model.forward_integer(x)[0].numpy())


@needs_avx2
def test_fallback_model_matches_integer_reference():
    logits, reference = run_model(DEIT, LOOP_AVX2, 3)
    np.testing.assert_array_equal(logits, reference)


@needs_vnni
def test_model_assembly_uses_vpdpbusd_and_vpdpwssd():
    asm = compiled(DEIT, HOST)[1].mod.imports_[0].inspect_source("asm")
    assert "vpdpbusd" in asm
    assert "vpdpwssd" in asm


# ---- GEMM kernels alone -------------------------------------------------------------------------
@needs_vnni
@pytest.mark.parametrize("kind", ["random", "min", "max"])
def test_vnni_dense_is_exact(kind):
    check_dense(PATHS["avx512vnni"], HOST, kind)


@needs_avx2
@pytest.mark.parametrize("kind", ["random", "min", "max"])
def test_fallback_dense_is_exact(kind):
    check_dense(LOOP, AVX2_ONLY, kind)


@functools.cache
def attention_kernel(kind: str, tokens: int, depth: int, p_dtype="int16"):
    heads = (tirx.Var("batch", "int64"), I64(3))
    if kind == "qk":
        a = te.placeholder((*heads, I64(tokens), I64(depth)), "int8", name="q")
        b = te.placeholder((*heads, I64(tokens), I64(depth)), "int8", name="k")
        out = matmul.packed_qk(a, b)
    else:
        a = te.placeholder((*heads, I64(tokens), I64(tokens)), p_dtype, name="p")
        b = te.placeholder((*heads, I64(tokens), I64(depth)), "int8", name="v")
        out = matmul.packed_pv(a, b)
    func = te.create_prim_func([a, b, out])
    path = PATHS["avx512vnni"]
    return build(func, lambda sch: matmul.schedule_packed_attention(sch, kind, path), HOST)


def check_attention(kind: str) -> None:
    for case, (tokens, depth) in enumerate([(197, 64), (49, 32), (1, 16), (5, 6)]):
        q = int_inputs(kind, (2, 3, tokens, depth), "int8", seed=case)
        k = int_inputs(kind, (2, 3, tokens, depth), "int8", seed=case + 1)
        qk = call(attention_kernel("qk", tokens, depth), q, k,
                  out_shape=(2, 3, tokens, tokens))
        np.testing.assert_array_equal(qk, q.astype(np.int64) @ k.swapaxes(-1, -2), str(case))
        for dtype in ("int16", "int8"):  # Shiftmax's output bits: 16 (DeiT) or 8
            p = int_inputs(kind, (2, 3, tokens, tokens), dtype, seed=case + 2)
            p = np.abs(p.astype(np.int32)).clip(0, np.iinfo(dtype).max).astype(dtype)
            pv = call(attention_kernel("pv", tokens, depth, dtype), p, q,
                      out_shape=(2, 3, tokens, depth))
            np.testing.assert_array_equal(pv, p.astype(np.int64) @ q, f"{case} {dtype}")


@needs_vnni
@pytest.mark.parametrize("kind", ["random", "min", "max"])
def test_vnni_attention_matmuls_are_exact(kind):
    check_attention(kind)


@needs_vnni
def test_dense_kernel_assembly_has_vpdpbusd_only_with_vnni():
    vnni = dense_kernel(197, 384, 384, PATHS["avx512vnni"], HOST)
    assert "vpdpbusd" in vnni.mod.inspect_source("asm")
    fallback = dense_kernel(197, 384, 384, LOOP, AVX2_ONLY).mod.inspect_source("asm")
    assert "vpdpbusd" not in fallback


# ---- the division rewrite -----------------------------------------------------------------------
def test_floordiv_through_float64_is_exact_on_extremes():
    """(2**31 - 1) // d and n // d for 32-bit n, as ShiftGELU and shift_exp divide."""
    n = te.placeholder((8192,), "int32", name="n")
    d = te.placeholder((8192,), "int32", name="d")
    out = te.compute(
        (8192,),
        lambda i: tirx.floordiv(n[i].astype("int64"), d[i].astype("int64"))
        + tirx.floordiv(tirx.const(2**31 - 1, "int64"), d[i].astype("int64")),
        name="out",
    )
    func = rewrite_divisions(te.create_prim_func([n, d, out]))
    assert "T.floor" in func.script()
    rng = np.random.default_rng(0)
    numer = np.concatenate([[2**31 - 1, -(2**31), 0, -1, 1], rng.integers(-(2**31), 2**31, 8187)])
    denom = np.concatenate([[1, 1, 7, 3, -3], rng.integers(1, 2**31, 4000),
                            -rng.integers(1, 2**31, 3000), rng.integers(1, 64, 1187)])
    ex = build(func, lambda sch: None, HOST)
    got = call(ex, numer.astype(np.int32), denom.astype(np.int32), out_shape=(8192,),
               out_dtype="int64")
    np.testing.assert_array_equal(got, numer // denom + (2**31 - 1) // denom)
