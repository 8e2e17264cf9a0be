"""--softmax-bits 8, the opt-in fast mode: every Shiftmax emits 8-bit probabilities, so
probs @ V is an int8 x int8 GEMM. The artifact is bit-exact with the reference at that width,
records it, and ivit-eval runs its reference at the artifact's width."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import DEIT, SWIN, digit_folder, images, quantized

import ivit_tvm
from ivit_tvm import data
from ivit_tvm.artifact import MANIFEST
from ivit_tvm.checkpoint import save_checkpoint
from ivit_tvm.cli.compile import compile_cmd
from ivit_tvm.cli.eval import REFERENCE, eval_cmd
from ivit_tvm.compile import compile_model, lower_model, make_target
from ivit_tvm.models.precision import set_softmax_bits, softmax_bits, softmax_modules
from ivit_tvm.ops import names

LLVM = make_target("llvm")


def at_bits(config, bits: int):
    """A copy of the shared calibrated model with Shiftmax at `bits` (never the shared one)."""
    model = copy.deepcopy(quantized(config))
    set_softmax_bits(model, bits)
    return model


def test_set_softmax_bits_sets_every_shiftmax_and_refuses_other_widths():
    model = copy.deepcopy(quantized(DEIT))
    assert softmax_bits(model) == 16 and softmax_bits(quantized(SWIN)) == 8
    assert set_softmax_bits(model, 8) == 16
    assert {m.output_bit for m in softmax_modules(model)} == {8}
    with pytest.raises(ValueError, match="choose one of 8, 16"):
        set_softmax_bits(model, 7)
    softmax_modules(model)[0].output_bit = 16
    with pytest.raises(ValueError, match="widths are \\[8, 16\\]"):
        softmax_bits(model)


def test_probs_at_v_reads_int8_probabilities():
    """The frontend follows the modules: at 8 bits p @ V takes int8 probabilities too."""
    for bits, expected in ((16, {"int8", "int16"}), (8, {"int8"})):
        mod = lower_model(at_bits(DEIT, bits), LLVM).mod
        first_operands = {str(func.params[0].ty.dtype)
                          for gv, func in mod.functions.items()
                          if gv.name_hint.startswith(names.BATCH_MATMUL)}
        assert first_operands == expected, (bits, first_operands)


def test_cuda_probs_at_v_units_by_width_and_arch():
    """Below sm_80, int16 x int8 probs @ V is the scalar loop and int8 x int8 is dp4a; on
    sm_80+ both are on tensor cores, the 16-bit one as two GEMMs (high and low bytes)."""
    from ivit_tvm.schedules.cuda.gemm import gemm_choices
    from ivit_tvm.schedules.cuda.pipeline import schedule_module

    strategies = {}
    for arch in ("sm_75", "sm_80"):
        cuda = make_target("cuda", arch=arch)
        for bits in (16, 8):
            scheduled = schedule_module(lower_model(at_bits(DEIT, bits), cuda).mod, cuda.target)
            strategies[arch, bits] = [row["strategy"] for row in gemm_choices(scheduled)
                                      if "batch_matmul" in row["primfunc"]]
    assert set(strategies["sm_75", 16]) == {"dp4a", "scalar"}  # q @ k^T dp4a, p @ V scalar
    assert set(strategies["sm_75", 8]) == {"dp4a"}
    assert set(strategies["sm_80", 16]) == set(strategies["sm_80", 8]) == {"mma"}
    assert len(strategies["sm_80", 16]) == len(strategies["sm_80", 8]) + 1  # p @ V: 2 GEMMs


@pytest.mark.parametrize("batch", [1, 3])
def test_fast_mode_artifact_equals_the_8_bit_reference(batch, tmp_path):
    model = at_bits(DEIT, 8)
    out = tmp_path / "fast.ivit"
    compile_model(model, LLVM, out, progress=False)
    assert json.loads((out / MANIFEST).read_text())["softmax_bits"] == 8
    x = images(DEIT, seed=20 + batch, batch=batch)
    logits, _ = ivit_tvm.load(out).run_int(x.numpy())
    reference, _ = model.forward_integer(x)
    np.testing.assert_array_equal(logits, reference.numpy())
    trained, _ = quantized(DEIT).forward_integer(x)
    assert not torch.equal(reference, trained)  # another model: the mode is not a no-op


def test_compile_option_records_the_width_and_says_so(tmp_path):
    checkpoint = save_checkpoint(quantized(DEIT), tmp_path / "deit.pth")
    out = tmp_path / "deit.ivit"
    result = CliRunner().invoke(compile_cmd, [str(checkpoint), "--target", "llvm", "-o",
                                              str(out), "--softmax-bits", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / MANIFEST).read_text())["softmax_bits"] == 8
    assert "8-bit probabilities" in result.stderr and "uses 16" in result.stderr
    refused = CliRunner().invoke(compile_cmd, [str(checkpoint), "--target", "llvm", "-o",
                                               str(tmp_path / "x.ivit"), "--softmax-bits", "4"])
    assert refused.exit_code == 2 and "'4' is not one of '16', '8'" in refused.output
    assert not (tmp_path / "x.ivit").exists()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return digit_folder(tmp_path_factory.mktemp("digits"), 2)


def test_eval_runs_the_reference_at_the_artifacts_width(digits_folder, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "digits8.ivit"
    compiled = CliRunner().invoke(compile_cmd, [str(data.DIGITS_QAT), "--target", "llvm", "-o",
                                                str(out), "--softmax-bits", "8", "--quiet"])
    assert compiled.exit_code == 0, compiled.output
    report = tmp_path / "eval.json"
    result = CliRunner().invoke(eval_cmd, [str(data.DIGITS_QAT), "--data", str(digits_folder),
                                           "--artifact", str(out), "--json", str(report),
                                           "--quiet"])
    assert result.exit_code == 0, result.output
    assert "Shiftmax at 8 bits" in result.stderr
    summary = json.loads(report.read_text())
    assert summary["bit_exact_images"] == summary["compared"] == 20
    assert REFERENCE in summary["accuracy"]
    clash = CliRunner().invoke(eval_cmd, [str(data.DIGITS_QAT), "--data", str(digits_folder),
                                          "--artifact", str(out), "--softmax-bits", "16",
                                          "--quiet"])
    assert clash.exit_code == 1 and "compiled with Shiftmax at 8 bits" in clash.stderr
    manifest = json.loads((out / MANIFEST).read_text())
    (out / MANIFEST).write_text(json.dumps({**manifest, "softmax_bits": 12}))
    corrupt = CliRunner().invoke(eval_cmd, [str(data.DIGITS_QAT), "--data", str(digits_folder),
                                            "--artifact", str(out), "--quiet"])
    assert corrupt.exit_code == 1 and "records softmax_bits 12" in corrupt.stderr
