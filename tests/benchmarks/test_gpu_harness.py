"""The GPU run's harness, checked here without a GPU: its seeded inputs are exact and
reproducible, its GEMM reference (torch._int_mm + the reference requantize) agrees with the
project's GEMM kernels built for the CPU, and its report computes the speedups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ivit_tvm.benchmarks.gpu import check, inputs, prepare, report
from ivit_tvm.schedules.backend import get_backend


def test_seeded_images_are_reproducible_and_exact_in_float32():
    a = inputs.seeded_images(5, (2, 3, 8, 8))
    b = inputs.seeded_images(5, (2, 3, 8, 8))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    assert not np.array_equal(a, inputs.seeded_images(6, (2, 3, 8, 8)))
    assert np.array_equal(a * 256, np.round(a * 256))  # multiples of 1/256: exact
    assert -2 <= a.min() and a.max() < 2


def test_image_seeds_differ_per_model_and_batch():
    seeds = {inputs.image_seed(m, b) for m in prepare.MODELS for b in (1, 3, 32)}
    assert len(seeds) == 3 * len(prepare.MODELS)


@pytest.fixture(scope="module")
def gemms_on_cpu():
    """gemm_module at batch 1 (M = 197), built with the project's CPU pipeline."""
    import tvm
    from tvm import relax

    mod, shapes = prepare.gemm_module(batch=1)
    backend = get_backend("llvm")
    vm = relax.VirtualMachine(backend.build(mod, backend.make_target()), tvm.cpu())
    return vm, {"shapes": {k: list(v) for k, v in shapes.items()}, "input_seed": 7}


def test_gpu_check_reference_equals_the_project_gemm_kernels(gemms_on_cpu):
    import tvm

    vm, entry = gemms_on_cpu
    assert list(entry["shapes"]) == list(prepare.DEIT_S_GEMMS)
    for index, name in enumerate(entry["shapes"]):
        x_q, weight_q, bias_q = check.gemm_operands(entry, name, index)
        x_q[0, :] = -128  # extreme rows: the largest magnitudes the GEMM sees
        x_q[1, :] = 127
        got = vm[f"gemm_{name}"](tvm.runtime.tensor(x_q)).numpy()
        expected = check.gemm_reference(*map(torch.from_numpy, (x_q, weight_q, bias_q)))
        assert got.dtype == np.int8 and got.shape == tuple(expected.shape)
        np.testing.assert_array_equal(got, expected.numpy(), err_msg=name)
        assert len(np.unique(got)) > 32, f"{name}: the requantized output is degenerate"


def test_gpu_check_reference_sees_a_wrong_bias():
    entry = {"shapes": {"proj": [20, 64, 16]}, "input_seed": 7}
    x_q, weight_q, bias_q = map(torch.from_numpy, check.gemm_operands(entry, "proj", 0))
    right = check.gemm_reference(x_q, weight_q, bias_q)
    wrong = check.gemm_reference(x_q, weight_q, bias_q + (1 << 22))
    assert not torch.equal(right, wrong)


def test_report_tables_give_speedups_and_gemm_peak_fraction():
    rows = [{"model": "deit_small", "engine": e, "batch": b, "median_ms": ms,
             "images_per_s": b / ms * 1e3}
            for e, b, ms in (("ivit-tvm-int8", 1, 1.0), ("torch-fp16", 1, 1.5),
                             ("ivit-tvm-int8", 32, 4.0), ("torch-fp16", 32, 10.0))]
    gemms = [{"gemm": "fc1", "m": 6304, "k": 384, "n": 1536, "engine": "ivit-tvm",
              "median_ms": 0.01, "tops": 742.9, "peak_fraction": 0.375}]
    skipped = {"swin_tiny": "not in this carry"}
    text = report.markdown({"bench": {"results": rows, "gemms": gemms, "skipped": skipped}})
    assert "| ivit-tvm speedup vs torch-fp16 | 1.50x | 2.50x |" in text
    assert "| fc1 | 6304 x 384 x 1536 | ivit-tvm | 0.0100 | 742.9 | 38% |" in text
    assert "- swin_tiny not timed: not in this carry" in text
