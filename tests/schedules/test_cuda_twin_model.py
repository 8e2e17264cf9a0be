"""Whole models through the CUDA schedules, run on the CPU: every kernel of the reduced DeiT and
Swin as the CUDA pipeline schedules it for sm_80 (tensor-core GEMMs untensorized, with the
attention head split and merge folded in, dp4a loops, row kernels, dlight's layout kernels)
becomes its CPU twin (schedules/cuda/twin.py), and the
logits equal the PyTorch integer reference bit for bit at batch 1 and 3."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.cuda import gemm_choices, schedule_module
from ivit_tvm.schedules.cuda.twin import build_twin_module
from support import DEIT, SWIN, images, quantized

from ivit_tvm.compile import apply_graph_passes, lower_model


@pytest.fixture(scope="module", params=["deit", "swin"])
def model_twin(request):
    """(config, model, module as ivit-compile lowers it for sm_80, its twin executable)."""
    config = {"deit": DEIT, "swin": SWIN}[request.param]
    model = quantized(config)
    info = make_target("cuda", arch="sm_80")
    mod = apply_graph_passes(lower_model(model, info)).mod
    return config, model, mod, build_twin_module(mod, info.target)


@pytest.mark.parametrize("batch", [1, 3])
def test_model_twin_equals_pytorch_integer_reference(model_twin, batch):
    config, model, _, executable = model_twin
    vm = tvm.relax.VirtualMachine(executable, tvm.cpu())
    x = images(config, seed=batch, batch=batch)
    with torch.no_grad():
        expected = model.forward_integer(x)[0].numpy()  # (B, classes) int32
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_array_equal(got, expected)


def test_model_twin_covers_attention_on_tensor_cores(model_twin):
    """The twin ran both attention matmuls as tensor-core GEMMs: q @ k^T and probs @ V
    (DeiT's 16-bit probabilities as the high- and low-byte GEMMs, Swin's 8-bit as one)."""
    config, _, mod, _ = model_twin
    choices = gemm_choices(schedule_module(mod, make_target("cuda", arch="sm_80").target))
    attention = [row for row in choices if "batch_matmul" in row["primfunc"]]
    assert {row["strategy"] for row in attention} == {"mma"}
    # distinct PrimFuncs (identical blocks share one): q @ k^T, then p @ V as 2 or 1 GEMMs
    assert len(attention) >= (3 if config.arch == "vit" else 2)
    # ... with the head split and merge folded in (fold_layout.py) where it applies
    assert any("_heads" in row["primfunc"] for row in attention)
