"""schedules.cpu: what the CPU kernels fuse. Each dense GEMM's epilogue (requantize, residual
add) runs per row block right after the GEMM (gemm.epilogue_like_acc); attention's head split and
merge fold into its matmul kernels (schedules.fold_layout, inlined by matmul.inline_layout);
reshape's division by the symbolic batch inside a folded kernel is dropped
(tir_rewrite.drop_index_wraps). Bit-exactness of the models built this way is
test_cpu_schedules.py's (reduced DeiT and Swin, batch 1 and 3: 17 and 51 token rows, not
multiples of the 8-row block)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
import tvm_ffi
from ivit_tvm.schedules.cpu import dense
from ivit_tvm.schedules.tir_rewrite import drop_index_wraps
from scheduled_models import assert_model_exact, prim_funcs, scheduled
from support import DEIT, SWIN
from tvm import relax, te, tirx, topi
from tvm.s_tir import Schedule

from ivit_tvm.ops.tir_query import block_names, root_nests

LAYOUT_KERNEL = re.compile(r"(transpose|strided_slice)\d*")  # reshapes become views later
LAYOUT_BLOCK = re.compile(r"T_(transpose|reshape|strided_slice)\w*")


def calls(mod: tvm.IRModule) -> list[str]:
    """PrimFunc names called by the module's Relax functions, once per call."""
    names: list[str] = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir")):
            names.append(expr.args[0].name_hint)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return names


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_dense_epilogue_runs_under_the_gemm_row_loop(config):
    """Every packed dense kernel is two loop nests: the activation shift, then the GEMM with
    its requantize under the same parallel row-block loop (no third nest re-reading the
    int32 accumulators)."""
    denses = {name: f for name, f in prim_funcs(scheduled(config)).items()
              if f"{dense.ACC_BLOCK}_init" in block_names(f)}
    assert len(denses) >= 4
    for name, func in denses.items():
        nests = [block_names(nest) for nest in root_nests(func)]
        assert len(nests) == 2, (name, nests)
        assert nests[0] == [dense.SHIFT_BLOCK], (name, nests)
        gemm = nests[1]
        assert gemm[:2] == [f"{dense.ACC_BLOCK}_init", f"{dense.ACC_BLOCK}_update_o"], (name, gemm)
        assert len(gemm) == 3, (name, gemm)  # the epilogue (its chain inlined into one block)


def test_deit_attention_carries_its_head_split_and_merge():
    """Per block, the q/k/v slices and transposes and the head merge are gone from the call
    list (the patch embedding's transpose stays); the two attention kernels per block hold no
    layout block of their own (inlined into the packing and the requantize)."""
    mod = scheduled(DEIT)
    called = calls(mod)
    layout = [name for name in called if LAYOUT_KERNEL.fullmatch(name)]
    assert layout == ["transpose"], layout
    heads = [name for name in called if "_heads" in name]
    assert len(heads) == 2 * DEIT.depth, heads
    funcs = prim_funcs(mod)
    for name in set(heads):
        left = [b for b in block_names(funcs[name]) if LAYOUT_BLOCK.fullmatch(b)]
        assert left == [], (name, left)


# ---- drop_index_wraps ---------------------------------------------------------------------------
def _reshape_then_add(extra_wrap: bool = False):
    """x (B, 24) int32 -> reshape (B, 4, 6) -> + 1, the reshape inlined: its index unravels
    the flat position with `% B`. extra_wrap: a load at (i + 1) % B, which does wrap."""
    batch = tirx.Var("batch", "int64")
    x = te.placeholder((batch, 24), "int32", name="x")
    y = topi.reshape(x, (batch, 4, 6))

    def body(b, i, j):
        value = y[b, i, j] + 1
        if extra_wrap:
            value = value + x[tirx.floormod(b + 1, batch), i * 6 + j]
        return value

    out = te.compute((batch, 4, 6), body, name="out")
    sch = Schedule(te.create_prim_func([x, out]).with_attr("global_symbol", "main"))
    sch.compute_inline(sch.get_sblock(block_names(sch.mod["main"])[0]))
    return sch.mod["main"], batch


def _symbolic_wraps(func: tirx.PrimFunc) -> int:
    found = []

    def visit(node):
        if not isinstance(node.b, tirx.IntImm):
            found.append(node)

    def store(node):  # the computation, not the read regions TVM derives from it
        tvm_ffi.structural_walk(node.value, [(tirx.FloorMod, visit), (tirx.FloorDiv, visit)])

    tvm_ffi.structural_walk(func, (tirx.BufferStore, store))
    return len(found)


@pytest.mark.parametrize("extra_wrap", [False, True])
def test_drop_index_wraps_only_where_the_index_is_in_range(extra_wrap):
    func, _ = _reshape_then_add(extra_wrap)
    assert _symbolic_wraps(func) >= 1
    rewritten = drop_index_wraps(func)
    assert _symbolic_wraps(rewritten) == (1 if extra_wrap else 0)  # (b + 1) % B must stay
    ex = tvm.compile(tvm.IRModule({"main": rewritten}), target="llvm")
    x = np.arange(3 * 24, dtype=np.int32).reshape(3, 24)
    out = tvm.runtime.tensor(np.zeros((3, 4, 6), np.int32))
    ex(tvm.runtime.tensor(x), out)
    expected = x.reshape(3, 4, 6) + 1
    if extra_wrap:
        expected = expected + np.roll(x, -1, axis=0).reshape(3, 4, 6)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_drop_index_wraps_uses_an_if_then_else_condition():
    """A padded read clamps its index only where the condition fails: inside the branch the
    condition bounds it, so the batch wrap around it goes."""
    batch = tirx.Var("batch", "int64")
    x = te.placeholder((batch, 5), "int32", name="x")
    y = topi.reshape(x, (batch, 5))

    def padded(b, j):  # j in [0, 8): the reshape's unravel of b * 5 + j wraps only if j >= 5
        return tirx.if_then_else(j < 5, y[b, j], 0)

    out = te.compute((batch, 8), padded, name="out")
    sch = Schedule(te.create_prim_func([x, out]).with_attr("global_symbol", "main"))
    sch.compute_inline(sch.get_sblock(block_names(sch.mod["main"])[0]))
    func = sch.mod["main"]
    assert _symbolic_wraps(func) >= 1
    assert _symbolic_wraps(drop_index_wraps(func)) == 0


def test_deit_attention_epilogues_run_per_head():
    """Both attention kernels are one loop nest: per head, the packing, the GEMM, then the
    requantize (p @ V's with the head merge). q @ k^T's correction is a row of its GEMM
    (matmul.packed_qk), copied out per head before the requantize reads it."""
    funcs = prim_funcs(scheduled(DEIT))
    pv = [f for name, f in funcs.items() if "_heads" in name and "pv_acc_init" in block_names(f)]
    qk = [f for name, f in funcs.items() if "_heads" in name and "qk_acc_init" in block_names(f)]
    assert pv and qk
    for func in pv + qk:
        (nest,) = [block_names(n) for n in root_nests(func)]
        assert nest[-1] == "requantize", nest
    for func in qk:
        (nest,) = [block_names(n) for n in root_nests(func)]
        assert nest[-2] == "qk_colsum", nest


def test_head_dim_not_a_multiple_of_16_stays_exact():
    """4 heads of 24 (the I-ViT release's small models): p @ V's columns are padded to 32,
    where TVM's reverse_compute_at would derive a wrong epilogue nest from the padded region
    (gemm._covers_acc keeps that epilogue unfused); the model stays bit-exact."""
    assert_model_exact(seed=5, batch=3, img_size=32, patch_size=8, embed_dim=96, depth=1,
                       num_heads=4, num_classes=10)


def _span_loops(func, annotation: str, prefix: str) -> list[tuple[int, int]]:
    """(min, extent) of each loop right around a block carrying `annotation` (named prefix*)."""
    extents = []

    def visit(loop):
        body = loop.body
        if isinstance(body, tvm.s_tir.SBlockRealize) and annotation in body.block.annotations:
            assert body.block.name_hint.startswith(prefix)
            extents.append((int(loop.min), int(loop.extent)))

    tvm_ffi.structural_walk(func, (tirx.For, visit))
    return extents


def test_pv_pad_copy_is_split_at_the_token_count():
    """p @ V pads p's columns to whole int16 pairs (197 -> 198) by a clamped read; its copy loop
    is partitioned at the token count (matmul.INNER_SPAN), so the main part reads p at an
    affine column and the clamp leaves it (a third of the kernel's time when every element
    took a scalar load)."""
    from ivit_tvm.schedules.cpu.matmul import INNER_SPAN, PV_BLOCKS

    tokens = (DEIT.img_size // DEIT.patch_size) ** 2 + 1
    pv = [f for name, f in prim_funcs(scheduled(DEIT)).items() if "pv_acc_init" in block_names(f)]
    assert pv
    for func in pv:
        extents = _span_loops(func, INNER_SPAN, PV_BLOCKS[0])
        assert extents == [(0, tokens), (tokens, 1)], extents
