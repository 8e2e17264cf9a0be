"""schedules.cpu.lookup: ShiftGELU's (256, 256) table lookup as AVX512-VBMI vpermi2b, bit-exact
against numpy's indexing on random and extreme rows, read from the assembly on a VBMI target,
and the gather loop everywhere else (no VBMI, a row length that is not a multiple of 64, an
int16 table)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu import lookup
from ivit_tvm.schedules.cpu.pipeline import schedule_primfunc
from scheduled_models import assert_model_exact
from tvm import relax
from tvm.target import codegen

from ivit_tvm import ops
from ivit_tvm.quant import functional as F
from ivit_tvm.quant.fast import exp_table

LLVM = get_backend("llvm")
HOST = LLVM.resolve(tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()}))
ZNVER4 = LLVM.resolve(tvm.target.Target({"kind": "llvm", "mcpu": "znver4"}))
AVX2 = LLVM.resolve(tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"}))
needs_vbmi = pytest.mark.skipif(not HOST.caps.byte_permute, reason="this CPU has no AVX512-VBMI")


def lookup_func(channels: int, table_dtype: str = "int8") -> tvm.tirx.PrimFunc:
    """The lookup kernel as the frontend emits it: symbolic batch, 197 tokens."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    q = relax.Var("q", relax.TensorType((batch, 197, channels), "int8"))
    table = relax.Var("table", relax.TensorType((256, 256), table_dtype))
    with bb.function("main", [q, table]):
        bb.emit_func_output(bb.emit_te(ops.shiftgelu_lookup, q, table,
                                       primfunc_name_hint="kernel"))
    return bb.get()["kernel"]


def compiled(channels: int, target, table_dtype: str = "int8"):
    func = schedule_primfunc(lookup_func(channels, table_dtype), target.caps)
    return tvm.compile(func.with_attr("global_symbol", "main"), target=target.target)


def asm_of(executable) -> str:
    module = executable.mod
    return (module.imports[0] if module.imports else module).inspect_source("asm")


def rows(channels: int, seed: int) -> np.ndarray:
    """(3, 197, C) int8: random rows, then rows of -128, of 127, alternating ends, one-hot."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, (3, 197, channels)).astype(np.int8)
    q[0, 0], q[0, 1] = -128, 127
    q[0, 2] = np.where(np.arange(channels) % 2, -128, 127)
    q[0, 3] = -128
    q[0, 3, channels // 3] = 5
    q[1, :, :] = np.clip(q[1], -128, -100)  # low row maxima: the table's first rows
    return q


def check(executable, channels: int, table_dtype: str = "int8", seed: int = 0) -> None:
    q = rows(channels, seed)
    table = np.random.default_rng(seed + 1).integers(
        np.iinfo(table_dtype).min, np.iinfo(table_dtype).max, (256, 256), endpoint=True
    ).astype(table_dtype)
    out = tvm.runtime.tensor(np.zeros(q.shape, table_dtype))
    executable(tvm.runtime.tensor(q), tvm.runtime.tensor(table), out)
    want = table[q.max(axis=-1, keepdims=True).astype(int) + 128, q.astype(int) + 128]
    np.testing.assert_array_equal(out.numpy(), want)


@needs_vbmi
@pytest.mark.parametrize("channels", [64, 384, 1536])
def test_vbmi_lookup_is_exact(channels):
    executable = compiled(channels, HOST)
    assert "vpermi2b" in asm_of(executable) or "vpermt2b" in asm_of(executable)
    check(executable, channels, seed=channels)


def test_vbmi_target_permutes_from_registers():
    asm = asm_of(compiled(1536, ZNVER4))
    permutes = asm.count("vpermi2b") + asm.count("vpermt2b")
    assert permutes >= 2, "two vpermi2b per 64 values"
    assert "zmm" in asm


@pytest.mark.parametrize(("channels", "table_dtype", "target"), [
    (96, "int8", HOST), (384, "int16", HOST), (384, "int8", AVX2),
], ids=["ragged-row", "int16-table", "no-vbmi"])
def test_gather_loop_elsewhere_is_exact(channels, table_dtype, target):
    func = schedule_primfunc(lookup_func(channels, table_dtype), target.caps)
    assert lookup.STEP_BLOCK not in func.script()
    executable = tvm.compile(func.with_attr("global_symbol", "main"), target=target.target)
    assert "vpermi2b" not in asm_of(executable)
    if target is AVX2 and HOST.caps.vector_bytes < 32:
        pytest.skip("this CPU has no AVX2: built and read, not run")
    check(executable, channels, table_dtype, seed=channels)


# ---- Shiftmax's exponential table as vpermi2w (lookup.vectorize_exp_lookup) -------------------
needs_bw = pytest.mark.skipif(not HOST.caps.word_permute, reason="this CPU has no AVX512-BW")


def shiftmax_func(length: int, x0: int, masked: bool = False) -> tvm.tirx.PrimFunc:
    """ops.shiftmax with the frontend's exp table: (batch, 3, length, length) logits, symbolic
    batch; masked: Swin's window mask (2, length, length) int8 over a batch of windows."""
    bb = relax.BlockBuilder()
    batch = tvm.tirx.Var("batch", "int64")
    q = relax.Var("q", relax.TensorType((batch, 3, length, length), "int8"))
    table = relax.Var("table", relax.TensorType((256,), "int32"))
    mask = relax.Var("mask", relax.TensorType((2, length, length), "int8"))
    with bb.function("main", [q, table, *([mask] if masked else [])]):
        if masked:
            out = bb.emit_te(lambda q_t, table_t, mask_t: ops.shiftmax(
                q_t, x0, 16, mask=mask_t, window_mask=True, exp_table=table_t),
                q, table, mask, primfunc_name_hint="kernel")
        else:
            out = bb.emit_te(lambda q_t, table_t: ops.shiftmax(q_t, x0, 16, exp_table=table_t),
                             q, table, primfunc_name_hint="kernel")
        bb.emit_func_output(out)
    return bb.get()["kernel"]


def logits(length: int, seed: int) -> np.ndarray:
    """(2, 3, N, N) int8: random rows, then rows that reach both ends of the table's index
    ((x + 255) & 255 over x = q - max in [-255, 0]): all equal, -128 beside 127, one-hot."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-128, 128, (2, 3, length, length)).astype(np.int8)
    q[0, 0, 0] = -128
    q[0, 0, 1] = 127
    q[0, 0, 2] = np.where(np.arange(length) % 2, -128, 127)
    q[0, 0, 3] = -128
    q[0, 0, 3, length - 1] = 127  # the max in the scalar tail (or the last lane)
    q[0, 1] = np.clip(q[0, 1], -128, -120)  # small spread: the table's last entries only
    return q


def check_shiftmax(func, target, length: int, x0: int, seed: int = 0,
                   masked: bool = False) -> str:
    executable = tvm.compile(func.with_attr("global_symbol", "main"), target=target.target)
    q = logits(length, seed)
    table = exp_table(x0, F.SHIFTMAX_N, 255).numpy()
    out = tvm.runtime.tensor(np.zeros(q.shape, np.int16))
    if masked:
        mask = np.random.default_rng(seed + 1).random((2, length, length)) < 0.4
        mask[0, 0, :] = True  # a fully masked row
        mask[1, 1, : length // 2] = True
        executable(tvm.runtime.tensor(q), tvm.runtime.tensor(table),
                   tvm.runtime.tensor(mask.astype(np.int8)), out)
        windows = torch.from_numpy(q).reshape(1, 2, 3, length, length)  # window w: mask w % 2
        want = F.shiftmax(windows, x0, 16, mask=torch.from_numpy(mask)[None, :, None])
        want = want.reshape(q.shape).numpy()
    else:
        executable(tvm.runtime.tensor(q), tvm.runtime.tensor(table), out)
        want = F.shiftmax(torch.from_numpy(q), x0, 16).numpy()
    np.testing.assert_array_equal(out.numpy(), want)
    return asm_of(executable)


@needs_bw
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "window-mask"])
@pytest.mark.parametrize("length", [197, 49, 64, 32])
@pytest.mark.parametrize("x0", [-20, -3])
def test_exp_lookup_is_exact(length, x0, masked):
    """Rows of 197 and 49 end in a step that overlaps the one before it; no gather is left."""
    func = schedule_primfunc(shiftmax_func(length, x0, masked), HOST.caps)
    asm = check_shiftmax(func, HOST, length, x0, seed=length, masked=masked)
    assert "vpermi2w" in asm or "vpermt2w" in asm
    assert "vpgatherdd" not in asm


def test_exp_lookup_only_with_word_permutes():
    """AVX2 keeps the gather loop; rows shorter than the lanes keep it too."""
    assert not AVX2.caps.word_permute and ZNVER4.caps.word_permute
    for caps, length in ((AVX2.caps, 197), (ZNVER4.caps, 16)):
        func = schedule_primfunc(shiftmax_func(length, -20), caps)
        assert "vpermi2var.hi" not in func.script()
    assert "vpermi2var.hi" in schedule_primfunc(shiftmax_func(197, -20), ZNVER4.caps).script()


@needs_bw
def test_model_with_rows_past_the_lanes_stays_exact():
    """A one-block DeiT of 50 tokens (the reduced test models have 17, under the 32 lanes):
    its Shiftmax takes the permute steps (and an overlapping last one), bit-exact with the
    integer reference at batch 2."""
    assert_model_exact(seed=11, batch=2, img_size=56, patch_size=8, depth=1, num_classes=10)
