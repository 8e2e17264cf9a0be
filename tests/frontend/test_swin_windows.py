"""Swin's window attention in Relax: the batch stays an axis of its own, (B, nW, ...).

Shaped (B * nW, ...), a kernel's buffers do not name the batch B, so Relax passes it to the
kernel as an extra value (an int64 argument); such calls are left out of the requantize
fusion and of the attention fold (schedules/fold_layout.py), which cost Swin-T 90 kernel
launches on CUDA.
"""

from __future__ import annotations

import pytest
import tvm
from support import SWIN, quantized
from tvm import relax

from ivit_tvm.frontend import from_model
from ivit_tvm.ops.names import BATCH_MATMUL

CALL_TIR = tvm.ir.Op.get("relax.call_tir")


@pytest.fixture(scope="module")
def legalized() -> tvm.IRModule:
    mod = from_model(quantized(SWIN), batch=None).mod
    return relax.transform.LegalizeOps()(mod)


def kernel_calls(mod: tvm.IRModule) -> list[relax.Call]:
    calls = []

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(CALL_TIR):
            calls.append(expr)

    for _, func in mod.functions_items():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


def test_every_swin_kernel_infers_the_batch_from_its_shapes(legalized):
    calls = kernel_calls(legalized)
    assert len(calls) > 50
    with_values = [call.args[0].name_hint for call in calls
                   if len(call.args) > 2  # symbolic values as tir_vars
                   or not all(isinstance(arg.ty, relax.TensorType) for arg in call.args[1].fields)]
    assert not with_values, with_values


def test_window_attention_runs_on_batch_window_head_axes(legalized):
    """q @ k^T and probs @ V of every block: (B, nW, heads, N, ...) with nW = 4 (8x8 tokens in
    4x4 windows) in stage 0 and 1 in stage 1."""
    windows = []
    for call in kernel_calls(legalized):
        if call.args[0].name_hint.startswith(BATCH_MATMUL):
            shape = call.args[1].fields[0].ty.shape
            assert len(shape) == 5 and isinstance(shape[0], tvm.tirx.Var), shape
            windows.append((int(shape[1]), int(shape[2])))
    assert sorted(set(windows)) == [(1, 6), (4, 3)]  # (nW, heads) per stage
