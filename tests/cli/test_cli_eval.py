"""ivit-eval: top-1/top-5 of the float model, the integer reference and the compiled artifact
on an ImageFolder, with the artifact checked bit for bit; timm's float model rebuilt from a
quantized model's float parameters."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import DEIT, SWIN, digit_folder, images, quantized

from ivit_tvm import data
from ivit_tvm.cli.eval import ARTIFACT, FP, REFERENCE, eval_cmd
from ivit_tvm.evaluate import TopK, build_fp_model, fp_model_from_quantized
from ivit_tvm.evaluate import evaluate as evaluate_batches
from ivit_tvm.ptq import quantize_fp, random_batches

PER_CLASS = 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A tiny ImageFolder: 10 classes of 8x8 digit PNGs from the test split."""
    return digit_folder(tmp_path_factory.mktemp("digits"), PER_CLASS)


def evaluate(*args) -> tuple[object, dict | None]:
    """Run ivit-eval on the bundled QAT checkpoint; (click result, its --json output)."""
    torch.set_num_threads(1)
    out = Path(args[args.index("--json") + 1]) if "--json" in args else None
    result = CliRunner().invoke(eval_cmd, [str(data.DIGITS_QAT), *map(str, args), "--quiet"])
    return result, (json.loads(out.read_text()) if out and out.exists() else None)


@pytest.fixture(scope="module")
def compiled_run(folder, tmp_path_factory):
    """ivit-eval with an artifact compiled on the fly (llvm)."""
    return evaluate("--data", folder, "--json", tmp_path_factory.mktemp("eval") / "out.json")


def test_reports_three_models_and_bit_exact_artifact(compiled_run):
    result, report = compiled_run
    assert result.exit_code == 0, result.output
    assert report["images"] == 10 * PER_CLASS
    assert set(report["accuracy"]) == {FP, REFERENCE, ARTIFACT}
    assert report["accuracy"][ARTIFACT] == report["accuracy"][REFERENCE]
    assert report["agreement"] == 100.0
    assert report["bit_exact_images"] == report["compared"] == 10 * PER_CLASS


def test_table_names_every_model_with_top1_top5(compiled_run):
    result, _ = compiled_run
    for name in (FP, REFERENCE, ARTIFACT):
        line = next(row for row in result.stdout.splitlines() if row.startswith(name))
        assert line.count("%") == 2
    assert "100.00% same predictions" in result.stdout


def test_digits_are_recognised(compiled_run):
    _, report = compiled_run
    for row in report["accuracy"].values():
        assert row["top1"] >= 80.0 and row["top5"] >= row["top1"]


def test_no_artifact_limit_and_fp_weights(folder, tmp_path):
    result, report = evaluate("--data", folder, "--no-artifact", "--limit", "7",
                              "--fp-weights", data.DIGITS_FP, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert report["images"] == 7
    assert set(report["accuracy"]) == {FP, REFERENCE}
    assert "agreement" not in report


def test_reference_every_samples_the_pytorch_models(folder, tmp_path):
    """20 images in batches of 4, every 2nd batch: batches 0, 2, 4 (12 images) for the PyTorch
    rows; the same accuracy as a full run restricted to those images."""
    result, report = evaluate("--data", folder, "--no-artifact", "--batch-size", "4",
                              "--reference-every", "2", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert report["images"] == 10 * PER_CLASS
    assert report["images_per_model"] == {FP: 12, REFERENCE: 12}
    line = next(row for row in result.stdout.splitlines() if row.startswith(REFERENCE))
    assert line.split()[-1] == "12"


def test_evaluate_compares_artifact_on_sampled_batches_only():
    """The artifact runs on every batch; the comparison only where the reference ran, and a
    difference there is counted."""
    calls = {"ref": 0, "art": 0}

    def predictor(name, offset):
        def predict(images):
            calls[name] += 1
            logits = torch.zeros(len(images), 3, dtype=torch.int32)
            logits[:, 0] = 1 + offset
            return logits
        return predict

    batches = [(torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64))] * 5
    result = evaluate_batches(batches, {"ref": predictor("ref", 0), "art": predictor("art", 0)},
                              compare=("ref", "art"), progress=False, every={"ref": 3})
    assert calls == {"ref": 2, "art": 5}  # batches 0 and 3
    assert (result.compared, result.bit_exact, result.images) == (4, 4, 10)
    assert result.top["ref"].count == 4 and result.top["art"].count == 10
    differing = evaluate_batches(batches, {"ref": predictor("ref", 0),
                                           "art": predictor("art", 1)},
                                 compare=("ref", "art"), progress=False, every={"ref": 2})
    assert (differing.compared, differing.bit_exact) == (6, 0)
    with pytest.raises(ValueError, match="at least 1"):
        evaluate_batches(batches, {"ref": predictor("ref", 0)}, every={"ref": 0})


def test_folder_with_other_class_count_is_refused(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        data.to_pil(data.load_split("test")[0][0]).save(tmp_path / name / "a.png")
    result, _ = evaluate("--data", tmp_path, "--no-artifact")
    assert result.exit_code == 1
    assert "2 class subfolders, but the model has 10 classes" in result.stderr


def test_artifact_of_another_model_is_refused(folder, tmp_path):
    (tmp_path / "other.ivit").mkdir()
    (tmp_path / "other.ivit" / "model.so").write_bytes(b"x")
    (tmp_path / "other.ivit" / "ivit_artifact.json").write_text(json.dumps({
        "format_version": 2, "config": DEIT.to_dict(), "input_scale": 0.1, "input_bits": 8,
        "input_shape": [-1, 3, 32, 32], "logits_scale": [0.1] * 10, "target": {"kind": "llvm"},
        "library_bytes": 1, "library_sha256": hashlib.sha256(b"x").hexdigest(),
        "checkpoint_sha256": None}))
    result, _ = evaluate("--data", folder, "--artifact", tmp_path / "other.ivit")
    assert result.exit_code == 1
    assert "compiled from another model" in result.stderr


def test_topk_counts_hits():
    top = TopK()
    logits = torch.tensor([[0.0, 3, 2, 1, 0, 0], [5, 0, 1, 2, 3, 4]])
    top.update(logits, torch.tensor([1, 1]))
    assert (top.accuracy(1), top.accuracy(5)) == (50.0, 50.0)


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_fp_model_carries_the_quantized_models_float_weights(config):
    torch.manual_seed(0)
    timm_model = build_fp_model(config)
    model = quantize_fp(config, timm_model.state_dict(), random_batches(config, 1, 2))
    x = images(config, seed=1)
    with torch.no_grad():
        assert torch.equal(fp_model_from_quantized(model)(x), timm_model(x))


def test_fp_model_of_quantized_model_keeps_it_unchanged():
    model = quantized(DEIT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fp_model_from_quantized(model).head.weight.data.zero_()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
