"""Shiftmax in the prologue of probs @ V's tensor-core GEMMs (schedules/cuda/prologue.py).

On sm_80+ FoldAttentionShiftmax puts each Shiftmax into both byte GEMMs that read its
probabilities; the GEMM's thread block computes the row max, sum and factor of its rows into
shared memory (a warp per row, shuffles) and its A fetch computes each probability byte.
Checked here: what the fold and the schedule pick out, each fused kernel's CPU twin against
the same PrimFunc unscheduled on random and extreme logits, and the CUDA source's
synchronisation (which a twin, running threads as loops, cannot see)."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import tvm
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.cuda import prologue
from ivit_tvm.schedules.cuda.build import device_modules
from ivit_tvm.schedules.cuda.gemm import IntegerGemm, match_integer_gemm
from ivit_tvm.schedules.cuda.pipeline import cuda_fusion_passes
from support import (
    DEIT,
    VOLATILE_TREE,
    concrete_shape,
    kernel_body,
    quantized,
    twin_and_reference,
)
from tvm import s_tir, tirx

from ivit_tvm.compile import apply_graph_passes, lower_model
from ivit_tvm.models.precision import set_softmax_bits

ARCH = "sm_80"
STATISTICS = ["shiftmax_row_max", "shiftmax_row_sum", "shiftmax_row_factor"]
BATCH = 3


@pytest.fixture(scope="module", params=[16, 8], ids=["probs16", "probs8"])
def fused(request):
    """{name: unscheduled PrimFunc} of the reduced DeiT's fused module for sm_80, with 16-bit
    probabilities (two byte GEMMs) or 8-bit ones (--softmax-bits 8: one int8 GEMM)."""
    info = make_target("cuda", arch=ARCH)
    model = copy.deepcopy(quantized(DEIT))  # the shared model stays as it is
    set_softmax_bits(model, request.param)
    mod = apply_graph_passes(lower_model(model, info)).mod
    with info.target:
        mod = tvm.transform.Sequential(cuda_fusion_passes())(mod)
    return {gv.name_hint: func for gv, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc)}


@pytest.fixture(scope="module")
def probs_at_v(fused):
    """{name: (unscheduled, scheduled untensorized)} of the GEMMs with Shiftmax folded in."""
    target = make_target("cuda", arch=ARCH).target
    found = {}
    for name, func in fused.items():
        sch = s_tir.Schedule(func)
        match = match_integer_gemm(sch)
        if match is not None and prologue.statistic_blocks(sch, match.block):
            scheduled = IntegerGemm(tensorize=False).apply(func, target, False)
            found[name] = (func, scheduled.mod["main"])
    return found


def test_fold_puts_shiftmax_into_the_gemms_reading_it(fused, probs_at_v):
    assert not any("shiftmax" in name for name in fused)  # no Shiftmax kernel of its own
    assert len(probs_at_v) >= 1  # both byte GEMMs (16-bit), or the one int8 GEMM
    for func, _ in probs_at_v.values():
        sch = s_tir.Schedule(func)
        stats = prologue.statistic_blocks(sch, match_integer_gemm(sch).block)
        assert [sch.get(block).name_hint for block in stats] == STATISTICS


def test_plain_gemm_has_no_statistics(fused):
    names = [name for name in fused if "dense1" in name]
    assert names
    sch = s_tir.Schedule(fused[names[0]])
    assert prologue.statistic_blocks(sch, match_integer_gemm(sch).block) == []


def test_statistics_live_in_shared_memory_a_warp_per_row(probs_at_v):
    for name, (_, scheduled) in probs_at_v.items():
        script = scheduled.script()
        for stat in STATISTICS:
            assert re.search(rf'{stat}_shared = T.sblock_alloc_buffer\([^\n]*scope="shared"',
                             script), (name, stat)
        assert "shiftmax_exp" not in script and '"shiftmax"' not in script  # inlined


def _logits(shape, gen, case: str) -> np.ndarray:
    """int8 logits (..., N, N): random, or rows at the int8 extremes."""
    if case == "random":
        return gen.integers(-128, 127, shape, endpoint=True).astype("int8")
    q = np.full(shape, -128, "int8")
    if case == "one_hot":  # one logit at 127 per row, the rest at -128: e = 1 or tiny
        rows = np.arange(shape[-2])
        q[..., rows, rows % shape[-1]] = 127
    elif case == "flat_max":  # every logit 127: equal probabilities
        q[...] = 127
    return q  # "flat_min": every logit -128


def _arguments(func: tirx.PrimFunc, gen, case: str) -> list:
    """Random arguments for `func` at batch BATCH: the logits as `case`, the exp table
    positive and increasing like Shiftmax's, other int8 tensors over their range, int32 ones
    (the high-byte accumulator) in a range where 256 x them fits int32."""
    arrays = []
    for param in func.params[:-1]:
        ty = param.ty  # BufferType (test_swin_windows: no kernel takes the batch as a value)
        shape, dtype = concrete_shape(ty, BATCH), str(ty.dtype)
        if len(shape) == 1 and dtype == "int32":  # Shiftmax's exp table (256,)
            arrays.append(np.sort(gen.integers(1, 2**15, shape)).astype(dtype))
        elif dtype == "int8" and len(shape) == 4 and shape[-1] == shape[-2]:
            arrays.append(_logits(shape, gen, case))
        elif dtype == "int8":
            arrays.append(gen.integers(-128, 127, shape, endpoint=True).astype(dtype))
        else:
            arrays.append(gen.integers(-(2**20), 2**20, shape).astype(dtype))
    return arrays


@pytest.mark.parametrize("case", ["random", "one_hot", "flat_max", "flat_min"])
def test_twin_equals_the_unscheduled_kernel(probs_at_v, case):
    """Each fused GEMM's CPU twin equals the fused PrimFunc built plainly for the CPU, at a
    batch of 3 (rows: 3 x heads x tokens, not a multiple of the block tile)."""
    gen = np.random.default_rng(11)
    for name, (plain, scheduled) in probs_at_v.items():
        results = twin_and_reference(plain, scheduled, _arguments(plain, gen, case), BATCH)
        assert results[0].any() or case == "flat_min", name  # the check can fail
        np.testing.assert_array_equal(results[1], results[0], err_msg=f"{name} ({case})")


def test_cuda_source_synchronises_statistics_before_the_fetch(probs_at_v, fused):
    """Statistics are written by a warp per row, read by every thread's fetch: shared
    memory, shuffle all-reduces (no volatile shared-memory tree) and a barrier after the
    last statistic and before the GEMM's first fetch."""
    target = make_target("cuda", arch=ARCH).target
    for name, (plain, _) in probs_at_v.items():
        scheduled = IntegerGemm().apply(plain, target, False).mod["main"]
        executable = tvm.compile(
            tvm.IRModule({"main": scheduled.with_attr("global_symbol", "main")}), target=target)
        source = "\n".join(m.inspect_source() for m in device_modules(executable, "cuda"))
        body = kernel_body(source)
        for stat in STATISTICS:
            assert re.search(rf"__shared__[^;]*{stat}_shared", body), (name, stat)
        assert body.count("__shfl_down_sync") >= 10  # row max (5 steps) and row sum (5)
        assert not VOLATILE_TREE.search(body), name
        factor_write = body.index("shiftmax_row_factor_shared_ptr[")
        first_fetch = body.index("mma_sync") if "mma_sync" in body else len(body)
        between = body[factor_write:first_fetch]
        assert "__syncthreads()" in between, name


def test_fusion_passes_need_a_target():
    with pytest.raises(ValueError, match="inside a cuda target"):
        cuda_fusion_passes()
