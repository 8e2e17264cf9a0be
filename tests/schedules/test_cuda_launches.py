"""Kernel launches of one CUDA inference. FoldAttentionLayout (schedules/fold_layout.py):
attention's head split and merge fold into the matmul kernels, every layout block inlined
into a fetch or the epilogue (none left to run outside the schedule); bit-exactness of the
folded kernels is tests/schedules/test_cuda_twin_model.py's. CUDA graphs: a fixed-batch
artifact's kernels are captured into one graph, a dynamic-batch one launches them one by one."""

from __future__ import annotations

import re

import pytest
import tvm
from ivit_tvm.schedules import fold_layout
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.cuda import pipeline
from ivit_tvm.schedules.cuda.build import LOWERING_CONFIG, build_cuda
from ivit_tvm.schedules.cuda.inspect import cuda_source, kernel_launches
from support import DEIT, SWIN, defined_kernels, quantized

from ivit_tvm.compile import apply_graph_passes, lower_model
from ivit_tvm.ops.tir_query import block_names

LAYOUT_KERNEL = re.compile(r"(transpose|strided_slice|reshape)\d*")
LAYOUT_BLOCK = re.compile(r"T_(transpose|reshape|strided_slice|broadcast_to)(_\d+)?")


def lowered(config, arch: str = "sm_80", fold: bool = True, monkeypatch=None,
            batch: int | None = None):
    """The module as build_cuda lowers it (its PassContext config), before VM codegen."""
    info = make_target("cuda", arch=arch)
    mod = apply_graph_passes(lower_model(quantized(config), info, batch=batch)).mod
    if not fold:  # neither the layout nor Shiftmax folded into attention's matmuls
        monkeypatch.setattr(fold_layout, "fold_attention_layout", tvm.transform.Sequential([]))
        monkeypatch.setattr(fold_layout, "fold_attention",
                            lambda *_, **__: tvm.transform.Sequential([]))
    with tvm.transform.PassContext(config=LOWERING_CONFIG):
        return pipeline.cuda_pipeline(info.target)(mod)


@pytest.fixture(scope="module")
def deit_launches():
    return kernel_launches(lowered(DEIT))


def test_deit_launches_no_head_split_or_merge_kernels(deit_launches, monkeypatch):
    """Per block, 3 strided slices, 4 transposes and the requantize after the head merge are
    gone (the patch embedding's one transpose stays); q @ k^T, and p @ V's two byte GEMMs
    each carry their layout; Shiftmax runs in p @ V's prologue (8 + 1 kernels per block)."""
    layout = {name: n for name, n in deit_launches.items() if LAYOUT_KERNEL.fullmatch(name)}
    assert sum(layout.values()) == 1, layout
    heads = sum(n for name, n in deit_launches.items() if "_heads" in name)
    assert heads == 3 * DEIT.depth
    unfolded = kernel_launches(lowered(DEIT, fold=False, monkeypatch=monkeypatch))
    assert sum(unfolded.values()) - sum(deit_launches.values()) == 9 * DEIT.depth


@pytest.mark.parametrize("arch, shiftmax_kernels", [("sm_80", 0), ("sm_75", DEIT.depth)])
def test_shiftmax_folds_into_probs_at_v_on_tensor_cores(arch, shiftmax_kernels):
    """On sm_80+ Shiftmax is computed in the prologue of both byte GEMMs of p @ V
    (schedules/cuda/prologue.py); dp4a targets keep it as a kernel of its own."""
    launches = kernel_launches(lowered(DEIT, arch=arch))
    assert sum(n for name, n in launches.items() if "shiftmax" in name) == shiftmax_kernels
    if shiftmax_kernels == 0:
        scheduled = pipeline.schedule_module(
            apply_graph_passes(lower_model(quantized(DEIT), make_target("cuda", arch=arch))).mod,
            make_target("cuda", arch=arch).target)
        with_shiftmax = [set(block_names(func)) for func in scheduled.functions.values()
                         if isinstance(func, tvm.tirx.PrimFunc)
                         and "shiftmax_row_max" in block_names(func)]
        assert len(with_shiftmax) >= 2  # the high- and the low-byte GEMM (or more copies)
        assert all("batch_matmul_acc_update_o" in names for names in with_shiftmax)


def test_every_launched_primfunc_is_one_kernel():
    """kernel_launches counts PrimFunc calls: each launched PrimFunc is one __global__."""
    info = make_target("cuda", arch="sm_80")
    mod = apply_graph_passes(lower_model(quantized(DEIT), info)).mod
    source = cuda_source(build_cuda(mod, info))
    kernels = defined_kernels(source)
    launches = kernel_launches(lowered(DEIT))
    assert len(kernels) == len(set(kernels))  # no PrimFunc with a second kernel
    launched = {f"{name}_kernel" for name in launches}
    assert launched <= set(kernels)
    # compiled, never launched: reshapes, which the VM runs as views (RewriteDataflowReshape)
    assert all(re.fullmatch(r"reshape\d*_kernel", name) for name in set(kernels) - launched)


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_folded_kernels_inline_every_layout_block(config):
    info = make_target("cuda", arch="sm_80")
    mod = apply_graph_passes(lower_model(quantized(config), info)).mod
    scheduled = pipeline.schedule_module(mod, info.target)
    folded = {gv.name_hint: func for gv, func in scheduled.functions_items()
              if isinstance(func, tvm.tirx.PrimFunc) and "_heads" in gv.name_hint}
    assert folded
    for name, func in folded.items():
        left = [block for block in block_names(func) if LAYOUT_BLOCK.fullmatch(block)]
        assert not left, (name, left)


def test_swin_window_attention_folds_in_every_block():
    """Swin's windows are (B, nW, ...) (frontend/swin.py), so every block's attention folds
    like DeiT's: its matmuls are `_heads` kernels, Shiftmax (masked in shifted blocks) runs in
    probs @ V's prologue, no head split or merge is a kernel, and qkv / proj carry their
    requantize."""
    launches = kernel_launches(lowered(SWIN))
    matmuls = {name: n for name, n in launches.items() if "batch_matmul" in name}
    assert all("_heads" in name for name in matmuls), matmuls
    assert sum(matmuls.values()) == 2 * sum(SWIN.depths), matmuls  # q @ k^T, probs @ V
    assert not [name for name in launches
                if "shiftmax" in name or name.startswith("strided_slice")]
    unfused = [name for name in launches if re.fullmatch(r"ivit_(dense|requantize)\d*", name)]
    assert len(unfused) == 2, unfused  # the head: the token average's requantize, its dense


def test_swin_window_partition_folds_into_the_dense_gemms():
    """The window partition (and, in shifted blocks, the roll before it) is folded into every
    block's qkv GEMM, which reads its rows through it (fold_layout.dense_group); the window
    reverse after proj stays: its transpose in blocks of several windows and, in shifted
    blocks, the roll's two takes. The patch embedding's transpose stays (moves_whole_rows)."""
    blocks = [block for stage in quantized(SWIN).layers for block in stage.blocks]
    shifted = sum(1 for block in blocks if block.shift)
    windowed = sum(1 for block in blocks if block.resolution[0] > block.window)
    assert shifted and windowed
    launches = kernel_launches(lowered(SWIN))
    count = {kind: sum(n for name, n in launches.items() if re.fullmatch(pattern, name))
             for kind, pattern in (("take", r"take\d*"), ("transpose", r"transpose\d*"),
                                   ("qkv", r"fused_ivit_dense\d*_ivit_requantize\d*_heads\d*"))}
    assert count == {"take": 2 * shifted, "transpose": 1 + windowed, "qkv": len(blocks)}, launches


def test_fixed_batch_inference_runs_as_one_cuda_graph():
    fixed = lowered(DEIT, batch=3)
    captured = [gv.name_hint for gv in fixed.get_global_vars()
                if gv.name_hint.endswith("_cuda_graph_capture")]
    assert len(captured) == 1
    inside = sum(kernel_launches(fixed, captured[0]).values())
    total = sum(kernel_launches(fixed).values())
    assert inside >= 0.8 * total, (inside, total)
    assert "vm.builtin.cuda_graph.run_or_capture" in fixed.script()
    dynamic = lowered(DEIT)  # symbolic batch: nothing static to capture, plain launches
    assert not any("cuda_graph" in gv.name_hint for gv in dynamic.get_global_vars())
