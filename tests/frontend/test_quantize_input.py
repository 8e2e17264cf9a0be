"""The graph's float entry (frontend.graph.quantize_input, TIR) equals functional.quantize_float
bit for bit, on the half-step inputs where multiplying by 1/S and dividing by S differ."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from support import half_step_inputs
from tvm import te

from ivit_tvm.frontend.graph import quantize_input
from ivit_tvm.quant import functional as qf


@pytest.mark.parametrize("scale", [0.02, 0.0371, 0.11])
def test_tir_entry_quantizer_equals_the_reference(scale):
    x = np.concatenate([half_step_inputs(scale), np.float32([1e9, -1e9, 0.0, -0.0])])
    images = te.placeholder((x.size,), "float32", name="images")
    func = te.create_prim_func([images, quantize_input(images, scale, 8)])
    run = tvm.compile(func, target="llvm")
    out = tvm.runtime.tensor(np.zeros(x.size, "int8"))
    run(tvm.runtime.tensor(x), out)
    expected = qf.quantize_float(torch.from_numpy(x), torch.tensor([scale]), 8).numpy()
    np.testing.assert_array_equal(out.numpy(), expected)
