"""QAT: it repairs a deliberately degraded checkpoint (scored with the exact integer path),
keeps and saves the best epoch as a loadable I-ViT checkpoint, and runs as `ivit-qat` on an
ImageFolder dataset."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ivit_tvm import data
from ivit_tvm.checkpoint import load_checkpoint, save_checkpoint
from ivit_tvm.cli.qat import qat_cmd
from ivit_tvm.qat import QATSettings, finetune, integer_top1

TRAIN_IMAGES, VAL_IMAGES = 128, 100
SETTINGS = QATSettings(epochs=1, lr=3e-3)


def degraded_model():
    """The bundled PTQ digits model with its classifier re-initialised: near chance."""
    model, _ = load_checkpoint(data.DIGITS_PTQ)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.head.weight.copy_(torch.randn(model.head.weight.shape, generator=generator) * 0.02)
        model.head.bias.zero_()
    return model


@functools.cache
def digits_batches(split: str, count: int, batch: int):
    images, labels = data.load_split(split)
    x = data.preprocess(images[:count], 32)  # (count, 3, 32, 32)
    y = torch.as_tensor(labels[:count])
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, count, batch)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short QAT run of the degraded model, best epoch saved: (model, result, path)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("qat") / "qat.pth"
    model = degraded_model()
    result = finetune(model, digits_batches("train", TRAIN_IMAGES, 32),
                      digits_batches("test", VAL_IMAGES, VAL_IMAGES), SETTINGS, out=out,
                      progress=False, log=lambda message: None)
    return model, result, out


def test_qat_improves_degraded_checkpoint(run):
    _, result, _ = run
    assert result.history[0]["epoch"] == 0
    assert result.best_epoch == 1
    assert result.best_top1 > result.start_top1 + 5


def test_training_speed_is_recorded(run):
    _, result, out = run
    epoch = result.history[1]
    assert epoch["steps_per_s"] > 0 and epoch["images_per_s"] > epoch["steps_per_s"]
    assert result.steps_per_s == epoch["steps_per_s"]
    assert "steps_per_s" not in result.history[0]  # the starting model is not trained


def test_model_holds_best_epoch_frozen(run):
    model, result, _ = run
    assert integer_top1(model, digits_batches("test", VAL_IMAGES, VAL_IMAGES)) == pytest.approx(
        result.best_top1)
    assert not model.training
    assert not model.qact_input.running_stat


def test_saved_checkpoint_reloads_with_same_integer_logits(run):
    model, result, out = run
    loaded, info = load_checkpoint(out)
    images = digits_batches("test", VAL_IMAGES, VAL_IMAGES)[0][0][:8]
    assert torch.equal(loaded.forward_integer(images)[0], model.forward_integer(images)[0])
    assert info.meta["qat"]["best_epoch"] == result.best_epoch
    assert info.meta["qat"]["history"][-1]["int_top1"] == round(result.best_top1, 3)


def test_settings_need_an_epoch():
    with pytest.raises(ValueError, match="at least one epoch"):
        QATSettings(epochs=0)


def test_distillation_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        finetune(degraded_model(), [], [], QATSettings(distill_weight=0.5), progress=False)


def write_digit_folder(root: Path, split: str, per_class: int) -> None:
    """An ImageFolder of 8x8 digit PNGs, `per_class` images in each of the 10 classes."""
    images, labels = data.load_split(split)
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True)
        for i, index in enumerate((labels == digit).nonzero()[0][:per_class]):
            data.to_pil(images[index]).save(folder / f"{i}.png")


def test_qat_command_writes_best_checkpoint(tmp_path):
    write_digit_folder(tmp_path / "digits" / "train", "train", per_class=3)
    write_digit_folder(tmp_path / "digits" / "val", "test", per_class=2)
    start, out = tmp_path / "degraded.pth", tmp_path / "qat.pth"
    save_checkpoint(degraded_model(), start)
    result = CliRunner().invoke(qat_cmd, [
        str(start), "--data", str(tmp_path / "digits"), "-o", str(out), "--epochs", "1",
        "--lr", "3e-3", "--no-augment", "--batch-size", "15", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: integer top-1 on 20 val images" in result.stdout
    assert "QAT steps/s)" in result.stdout
    _, info = load_checkpoint(out)
    assert info.meta["qat_from"] == str(start)
    assert info.meta["qat"]["best_int_top1"] >= info.meta["qat"]["history"][0]["int_top1"]


def test_qat_command_refuses_existing_output(tmp_path):
    out = tmp_path / "qat.pth"
    out.write_bytes(b"keep")
    result = CliRunner().invoke(qat_cmd, [str(data.DIGITS_PTQ), "--data", str(tmp_path),
                                          "-o", str(out)])
    assert result.exit_code == 1
    assert "exists; pass --force" in result.stderr
    assert out.read_bytes() == b"keep"
