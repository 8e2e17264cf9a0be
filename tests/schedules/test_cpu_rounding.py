"""schedules.cpu.rounding: the requantize's rounding shift through float64 where |x| < 2**53,
bit-exact against functional.requantize on ties and extremes; left in integers where the
operand is not bounded (an int32 requantize); q @ k^T's epilogue in DeiT takes it (the only
place the CPU rules apply it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu.pipeline import schedule_primfunc
from ivit_tvm.schedules.cpu.rounding import rewrite_rounding_shifts
from scheduled_models import AVX2, prim_funcs, scheduled
from support import DEIT
from tvm import relax, tirx
from tvm.target import codegen

from ivit_tvm import ops
from ivit_tvm.ops.tir_query import block_names
from ivit_tvm.quant import functional as F

HOST = get_backend("llvm").resolve(tvm.target.Target(
    {"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))


def requantize_func(dtype: str, multiplier: int, shift: int, bits: int) -> tirx.PrimFunc:
    """ops.requantize of a (batch, 37) tensor, per-tensor constants, symbolic batch."""
    bb = relax.BlockBuilder()
    batch = tirx.Var("batch", "int64")
    q = relax.Var("q", relax.TensorType((batch, 37), dtype))
    with bb.function("main", [q]):
        bb.emit_func_output(bb.emit_te(ops.requantize, q, multiplier, shift, bits,
                                       primfunc_name_hint="kernel"))
    return bb.get()["kernel"]


def nearbyints(func: tirx.PrimFunc) -> int:
    found = []
    tvm_ffi.structural_walk(func, (tvm.ir.Call, lambda call: found.append(call)
                                   if "nearbyint" in str(call.op) else None))
    return len(found)


def values(dtype: str) -> np.ndarray:
    """(4, 37): every value near both ends and zero, odd and even (ties at shift 1), random."""
    info = np.iinfo(dtype)
    edges = np.concatenate([np.arange(info.min, info.min + 12), np.arange(-6, 7),
                            np.arange(info.max - 11, info.max + 1)])[:37]
    rng = np.random.default_rng(3)
    rest = rng.integers(info.min, info.max, (3, 37), endpoint=True)
    return np.concatenate([edges[None], rest]).astype(dtype)


@pytest.mark.parametrize(("dtype", "multiplier", "shift", "bits"), [
    ("int16", 1, 1, 16),  # every odd value a tie
    ("int16", 3, 2, 16),  # ties at x * 3 = 2 mod 4
    ("int16", 2**31 - 1, 46, 8),  # |x * m| < 2**46
    ("int8", 1518500250, 38, 8),  # a DeiT-like ratio
    ("int16", -(2**31 - 1), 40, 16),  # a negative multiplier
], ids=["ties-1", "ties-2", "max-multiplier", "deit", "negative"])
@pytest.mark.parametrize("target", [HOST, AVX2], ids=["host", "avx2"])
def test_bounded_rounding_shift_goes_through_float64_exactly(dtype, multiplier, shift, bits,
                                                               target):
    if target is AVX2 and HOST.caps.vector_bytes < 32:
        pytest.skip("this CPU has no AVX2")
    func = schedule_primfunc(requantize_func(dtype, multiplier, shift, bits), target.caps)
    assert nearbyints(func) == 0  # the rules leave a plain requantize in integers
    func = rewrite_rounding_shifts(func, target.caps.int64_vectors)
    assert nearbyints(func) == 1
    executable = tvm.compile(func.with_attr("global_symbol", "main"), target=target.target)
    q = values(dtype)
    out = tvm.runtime.tensor(np.zeros(q.shape, f"int{bits}"))
    executable(tvm.runtime.tensor(q), out)
    want = F.requantize(torch.from_numpy(q), multiplier, shift, bits).numpy()
    np.testing.assert_array_equal(out.numpy(), want)


def test_unbounded_operand_stays_integer():
    """An int32 operand times a 31-bit multiplier reaches 2**62: no float64 there."""
    func = requantize_func("int32", 2**31 - 1, 40, 8)
    assert nearbyints(rewrite_rounding_shifts(func, True)) == 0
    narrow = requantize_func("int16", 2**31 - 1, 40, 8)
    assert nearbyints(rewrite_rounding_shifts(narrow, True)) == 1


def test_the_double_converts_to_int32_where_the_result_fits():
    """round(x / 2**s) of an int16 x times 2**31 - 1: fits int32 at s = 46; at s = 1 (2**45)
    only a CPU with 64-bit conversions (AVX-512DQ) takes the float path."""
    def casts(func) -> list[str]:
        found = []
        tvm_ffi.structural_walk(func, (tirx.Cast, lambda c: found.append(str(c.ty.dtype))))
        return found

    fits = rewrite_rounding_shifts(requantize_func("int16", 2**31 - 1, 46, 16), False)
    assert nearbyints(fits) == 1 and "int32" in casts(fits)
    wide = requantize_func("int16", 2**31 - 1, 1, 16)
    assert nearbyints(rewrite_rounding_shifts(wide, False)) == 0
    assert nearbyints(rewrite_rounding_shifts(wide, True)) == 1


def test_almost_rounding_shifts_are_left_alone():
    """Only rshift_round's exact form is rewritten: another constant or parity shift stays."""
    x = tirx.Var("x", "int16")
    wide = tirx.Cast("int64", x) * tirx.IntImm("int64", 3)
    s = tirx.IntImm("int64", 5)
    good = (wide + tirx.IntImm("int64", 15) + ((wide >> s) & tirx.IntImm("int64", 1))) >> s
    off_by_one = (wide + tirx.IntImm("int64", 16) + ((wide >> s) & tirx.IntImm("int64", 1))) >> s
    wrong_parity = (wide + tirx.IntImm("int64", 15) + ((wide >> tirx.IntImm("int64", 4))
                                                      & tirx.IntImm("int64", 1))) >> s
    for expr, want in ((good, 1), (off_by_one, 0), (wrong_parity, 0)):
        out = tirx.decl_buffer((1,), "int64", name="out")
        func = tirx.PrimFunc([x, out], tirx.BufferStore(out, expr, [tirx.IntImm("int64", 0)]))
        assert nearbyints(rewrite_rounding_shifts(func, True)) == want, expr


@pytest.mark.parametrize("target, acc_block", [("host", "qk_acc_init"), ("avx2", "qk16_acc_init")])
def test_deit_qk_epilogue_rounds_in_float64(target, acc_block):
    """q @ k^T's values are bounded by head_dim * 2**14 (the clamp of matmul.packed_qk, and of
    packed_qk16 on AVX2): its requantize rounds through float64 in every DeiT attention
    kernel that has one."""
    qk = [f for f in prim_funcs(scheduled(DEIT, target)).values()
          if acc_block in block_names(f)]
    assert qk
    for func in qk:
        assert nearbyints(func) == 1
