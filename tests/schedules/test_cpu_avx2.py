"""schedules.cpu on CPUs without AVX-512 VNNI: the AVX2 path (vpmaddwd on operands widened to
int16) runs here and is bit-exact on random and extreme inputs; the AVX-VNNI path (VEX-encoded
vpdpbusd/vpdpwssd on ymm) is built for Alder Lake and its assembly read, not run (this host may
lack AVX-VNNI); the ISA follows the target's CPU features."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import tvm
from gemm_kernels import I64, build, call, check_dense, dense_kernel, int_inputs
from ivit_tvm.schedules.backend import get_backend, make_target
from ivit_tvm.schedules.cpu import dense, gemm, isa, matmul, packing
from ivit_tvm.schedules.cpu.pipeline import cpu_pipeline
from scheduled_models import AVX2
from support import DEIT, SWIN, images, quantized
from tvm import relax, te, tirx

from ivit_tvm import ops
from ivit_tvm.frontend import from_model

LLVM = get_backend("llvm")
AVXVNNI = LLVM.resolve(tvm.target.Target({"kind": "llvm", "mcpu": "alderlake", "num-cores": 2}))
PORTABLE = LLVM.resolve(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64", "num-cores": 2}))
HOST_HAS_AVX2 = make_target("llvm").caps.vector_bytes >= 32
needs_avx2 = pytest.mark.skipif(not HOST_HAS_AVX2, reason="this CPU has no AVX2")
P_MAX = 2**15 - 1  # Shiftmax's largest 16-bit probability (docs/semantics.md: (e * f) >> 16)


def asm_of(executable) -> str:
    module = executable.mod
    return (module.imports_[0] if module.imports_ else module).inspect_source("asm")


def mnemonics(asm: str, name: str) -> list[str]:
    """The operand lists of every `name` instruction in asm ("{vex}" prefix allowed)."""
    return re.findall(rf"^\s*(?:\{{vex\}}\s*)?{name}\s+(.*)$", asm, flags=re.MULTILINE)


# ---- the ISA from the CPU features ------------------------------------------------------------
@pytest.mark.parametrize(("mcpu", "expected"), [
    ("x86-64", "generic"), ("haswell", "avx2"), ("x86-64-v3", "avx2"), ("znver1", "avx2"),
    ("alderlake", "avxvnni"), ("cascadelake", "avx512vnni"), ("sapphirerapids", "avx512vnni"),
    ("znver4", "avx512vnni"),
])
def test_isa_follows_the_cpu_features(mcpu, expected):
    caps = make_target("llvm", mcpu=mcpu).caps
    assert caps.isa == expected
    assert isa.gemm_path(caps).isa == expected
    assert caps.vnni == (expected == "avx512vnni")


def test_int16_packing_layout_and_no_correction():
    weight = int_inputs("random", (33, 7), "int8", seed=3)
    packed, corr = packing.pack_weight(weight, 2, "int16")
    assert corr is None and packed.dtype == np.int16 and packed.shape == (3, 4, 16, 2)
    n, k = np.meshgrid(np.arange(48), np.arange(8), indexing="ij")
    padded = np.zeros((48, 8), np.int16)
    padded[:33, :7] = weight
    np.testing.assert_array_equal(packed[n // 16, k // 2, n % 16, k % 2], padded)


# ---- AVX2: kernels run here -------------------------------------------------------------------
@needs_avx2
@pytest.mark.parametrize("kind", ["random", "min", "max"])
def test_avx2_dense_is_exact(kind):
    check_dense(isa.PATHS["avx2"], AVX2, kind)


@functools.cache
def attention_kernel(kind: str, tokens: int, depth: int, target, p_dtype="int16"):
    """q @ k^T or p @ v as the pipeline rewrites it on target's path, heads (batch, 3)."""
    path = isa.gemm_path(target.caps)
    heads = (tirx.Var("batch", "int64"), I64(3))
    if kind == "pv":
        a = te.placeholder((*heads, I64(tokens), I64(tokens)), p_dtype, name="p")
        b = te.placeholder((*heads, I64(tokens), I64(depth)), "int8", name="v")
        out = matmul.packed_pv(a, b, path.vector_bytes)
    else:
        a = te.placeholder((*heads, I64(tokens), I64(depth)), "int8", name="q")
        b = te.placeholder((*heads, I64(tokens), I64(depth)), "int8", name="k")
        compute = matmul.packed_qk if kind == "qk" else matmul.packed_qk16
        out = compute(a, b, path.vector_bytes)
    func = te.create_prim_func([a, b, out])
    return build(func, lambda sch: matmul.schedule_packed_attention(sch, kind, path), target)


ATTENTION_CASES = [(197, 64), (49, 32), (1, 16), (5, 6)]  # (tokens, head dim): ragged too


@needs_avx2
@pytest.mark.parametrize("kind", ["random", "min", "max"])
def test_avx2_qk_is_exact(kind):
    for case, (tokens, depth) in enumerate(ATTENTION_CASES):
        q = int_inputs(kind, (2, 3, tokens, depth), "int8", seed=case)
        k = int_inputs(kind, (2, 3, tokens, depth), "int8", seed=case + 1)
        got = call(attention_kernel("qk16", tokens, depth, AVX2), q, k,
                   out_shape=(2, 3, tokens, tokens))
        np.testing.assert_array_equal(got, q.astype(np.int64) @ k.swapaxes(-1, -2), str(case))


@needs_avx2
@pytest.mark.parametrize("kind", ["random", "largest", "largest_negative"])
@pytest.mark.parametrize("p_dtype", ["int16", "int8"])  # Shiftmax's bits: 16 (DeiT), 8 (Swin)
def test_avx2_pv_is_exact_up_to_the_largest_probabilities(kind, p_dtype):
    """p in [0, 2^(b-1) - 1] as Shiftmax gives it; the extremes: every p the largest, v all
    -128 or all 127 (vpmaddwd pair sums +-2^23, the row sums 197 * 2^22 < 2^31)."""
    p_max = P_MAX if p_dtype == "int16" else 127
    for case, (tokens, depth) in enumerate(ATTENTION_CASES):
        shape_p, shape_v = (2, 3, tokens, tokens), (2, 3, tokens, depth)
        if kind == "random":
            rng = np.random.default_rng(case)
            p = rng.integers(0, p_max, shape_p, endpoint=True).astype(p_dtype)
            v = int_inputs("random", shape_v, "int8", seed=case + 1)
        else:
            p = np.full(shape_p, p_max, p_dtype)
            v = int_inputs("min" if kind == "largest_negative" else "max", shape_v, "int8", 0)
        got = call(attention_kernel("pv", tokens, depth, AVX2, p_dtype), p, v,
                   out_shape=(2, 3, tokens, depth))
        np.testing.assert_array_equal(got, p.astype(np.int64) @ v, f"{case} {kind}")


def test_avx2_kernels_use_vpmaddwd_and_never_vpmaddubsw():
    path = isa.PATHS["avx2"]
    for executable in (dense_kernel(197, 384, 1000, path, AVX2),
                       attention_kernel("qk16", 197, 64, AVX2),
                       attention_kernel("pv", 197, 64, AVX2)):
        asm = asm_of(executable)
        assert mnemonics(asm, "vpmaddwd"), "no vpmaddwd"
        assert not mnemonics(asm, "vpmaddubsw")
        assert not mnemonics(asm, "vpdpbusd") and not mnemonics(asm, "vpdpwssd")
        assert "zmm" not in asm


def loop_blocks(asm: str, name: str, at_least: int = 4) -> list[str]:
    """The basic blocks of asm (split at labels, LLVM's "# %bb." fall-through marks and jumps)
    holding at least `at_least` `name` instructions: the GEMMs' unrolled K steps."""
    blocks = re.split(r"^(?:\S+:|\s*#\s*%bb\.|\s*j[a-z]+\s).*$", asm, flags=re.MULTILINE)
    return [block for block in blocks if len(mnemonics(block, name)) >= at_least]


@pytest.mark.parametrize(("target", "dense_op", "qk", "pv_op"), [
    (AVX2, "vpmaddwd", "qk16", "vpmaddwd"), (AVXVNNI, "vpdpbusd", "qk", "vpdpwssd")],
    ids=["avx2", "avxvnni"])
def test_ymm_register_blocks_fit_without_spills(target, dense_op, qk, pv_op):
    """16 ymm hold the whole register block (accumulators, the weight vectors, the broadcast):
    no stack access in the K steps of the dense or attention GEMMs (2 x 3 blocks spilled 4
    accumulators per step and ran ~1.35x slower on Zen 3)."""
    path = isa.gemm_path(target.caps)
    for executable, name in ((dense_kernel(197, 384, 1152, path, target), dense_op),
                             (attention_kernel(qk, 197, 64, target), dense_op),
                             (attention_kernel("pv", 197, 64, target), pv_op)):
        blocks = loop_blocks(asm_of(executable), name)
        assert blocks, f"no block of {name}"
        for block in blocks:
            assert "(%rsp)" not in block, f"stack access among {name}:\n{block}"


@pytest.mark.parametrize("vector_bytes", sorted(gemm.REGISTERS))
def test_register_block_fits_the_register_file(vector_bytes):
    per_vector = 64 // vector_bytes
    for n_tiles in range(1, 100):
        tile = gemm.choose_tile(n_tiles, 2, vector_bytes)
        assert n_tiles % tile.cols == 0
        used = (tile.rows + 1) * tile.cols * per_vector + 1  # accumulators, weights, broadcast
        assert used <= gemm.REGISTERS[vector_bytes], (n_tiles, tile)
    assert gemm.choose_tile(72, 2, 32) == gemm.Tile(6, 1, 2)  # DeiT-S qkv on ymm
    assert gemm.choose_tile(72, 4, 64) == gemm.Tile(8, 3, 4)  # zmm: 24 accumulators


def test_layernorm_multiplies_narrow_values_with_vpmuldq():
    """I-LayerNorm of int16 rows: q - mean and the factor are int16/int32 values in int64
    products, so AVX2 multiplies them with vpmuldq, never the three-vpmuludq 64-bit emulation
    (TVM's simplifier moves casts: an int32 q - mean came back as an int64 subtraction)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((tirx.Var("rows", "int64"), 384), "int16"))
    bias = relax.const(np.arange(384, dtype=np.int32))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(ops.int_layernorm, x, bias,
                                            primfunc_name_hint="ivit_layernorm"))
        bb.emit_func_output(out)
    asm = asm_of(tvm.compile(bb.get(), target=AVX2.target, relax_pipeline=cpu_pipeline(AVX2)))
    assert mnemonics(asm, "vpmuldq") and not mnemonics(asm, "vpmuludq")


# ---- AVX-VNNI: built for Alder Lake, assembly only ---------------------------------------------
def test_avxvnni_kernels_use_vex_vpdpbusd_and_vpdpwssd_on_ymm():
    dense_asm = asm_of(dense_kernel(197, 384, 1000, isa.PATHS["avxvnni"], AVXVNNI))
    qk_asm = asm_of(attention_kernel("qk", 197, 64, AVXVNNI))
    pv_asm = asm_of(attention_kernel("pv", 197, 64, AVXVNNI))
    for asm, name in ((dense_asm, "vpdpbusd"), (qk_asm, "vpdpbusd"), (pv_asm, "vpdpwssd")):
        operands = mnemonics(asm, name)
        assert operands, f"no {name}"
        assert all("ymm" in ops for ops in operands), operands[:3]
        assert re.search(rf"\{{vex\}}\s*{name}", asm), "not the VEX (AVX-VNNI) encoding"
        assert "zmm" not in asm and not mnemonics(asm, "vpmaddubsw")


@pytest.mark.parametrize(("mcpu", "narrow"), [
    ("x86-64-v3", True), ("znver1", True), ("alderlake", True), ("znver4", False),
    ("cascadelake", False),
])
def test_exp_width_follows_64_bit_vector_multiply(mcpu, narrow, monkeypatch):
    """ivit-compile lowers Shiftmax/ShiftGELU formulas (inputs wider than int8; int8 ones take
    tables) in int32 unless the CPU multiplies int64 vectors (AVX-512DQ), where the int64
    formulation measured faster."""
    import ivit_tvm.compile as compile_module

    target = make_target("llvm", mcpu=mcpu)
    assert target.caps.int64_vectors == (not narrow)
    seen = {}
    def from_model(model, batch=None, narrow_exp=True, byte_products=False):
        seen.update(narrow=narrow_exp, byte_products=byte_products)

    monkeypatch.setattr(compile_module, "from_model", from_model)
    compile_module.lower_model(object(), target)
    assert seen == {"narrow": narrow, "byte_products": False}  # CPUs keep int16 x int8


# ---- whole models -------------------------------------------------------------------------------
@functools.cache
def compiled(config, target):
    ex = tvm.compile(from_model(quantized(config)).mod, target=target.target,
                     relax_pipeline=cpu_pipeline(target))
    return relax.VirtualMachine(ex, tvm.cpu()), ex


@needs_avx2
@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
@pytest.mark.parametrize("batch", [1, 3])
def test_avx2_model_matches_integer_reference(config, batch):
    vm, ex = compiled(config, AVX2)
    x = images(config, seed=batch + 20, batch=batch)
    logits = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_array_equal(logits, quantized(config).forward_integer(x)[0].numpy())
    asm = asm_of(ex)
    assert mnemonics(asm, "vpmaddwd") and not mnemonics(asm, "vpmaddubsw")
    # the dense epilogues' per-channel requantize and I-LayerNorm multiply int32 values
    emulated = [name for name, body in functions(asm).items()
                if ("dense" in name or "layernorm" in name) and mnemonics(body, "vpmuludq")]
    assert not emulated, emulated


def functions(asm: str) -> dict[str, str]:
    """The assembly text of each symbol defined at a line start (`name:`), by name."""
    parts = re.split(r"^([A-Za-z_]\w*):", asm, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_portable_model_matches_integer_reference():
    """isa "generic" (x86-64: SSE2 only): the vectorized loops, still exact."""
    vm, ex = compiled(DEIT, PORTABLE)
    x = images(DEIT, seed=5, batch=2)
    logits = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_array_equal(logits, quantized(DEIT).forward_integer(x)[0].numpy())
    assert not mnemonics(asm_of(ex), "vpmaddwd")


def test_avxvnni_model_assembly():
    """The Alder Lake build: every int8 GEMM on {vex} vpdpbusd / vpdpwssd, ymm only."""
    asm = asm_of(compiled(DEIT, AVXVNNI)[1])
    assert mnemonics(asm, "vpdpbusd") and mnemonics(asm, "vpdpwssd")
    assert "zmm" not in asm and not mnemonics(asm, "vpmaddubsw")


def test_packed_dense_refuses_a_mismatched_correction():
    x = te.placeholder((I64(4), I64(8)), "int8", name="x")
    weight16 = te.placeholder((1, 4, 16, 2), "int16", name="w")
    corr = te.placeholder((16,), "int32", name="corr")
    with pytest.raises(ValueError, match="int16 weights take no correction"):
        dense.packed_dense(x, weight16, corr, 16, 32)
