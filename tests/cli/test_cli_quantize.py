"""ivit-quantize: writes a loadable, calibrated checkpoint from timm weights or a random init;
every bad input is one line on stderr, exit status 1 and no output file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ivit_tvm.checkpoint import load_checkpoint, save_checkpoint
from ivit_tvm.cli.quantize import (
    DEFAULT_CALIB_BATCH_SIZE,
    DEFAULT_CALIB_BATCHES,
    _counted,
    quantize_cmd,
)
from ivit_tvm.models import build_model, model_config
from ivit_tvm.models.fp_weights import parameter_names
from ivit_tvm.ptq import calibrate, folder_batches, random_batches

SMALL = ["--img-size", "32", "--num-batches", "1", "--batch-size", "2"]
CONFIG = model_config("deit_tiny", img_size=32, num_classes=10)


def run(*args: str):
    return CliRunner().invoke(quantize_cmd, [str(a) for a in args])


def assert_fails(result, output: Path, *phrases: str) -> None:
    assert result.exit_code == 1, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("ivit-quantize: error: ")
    assert all(p in line for p in phrases), line
    assert not output.exists()


@pytest.fixture(scope="module")
def fp_weights(tmp_path_factory) -> Path:
    """DeiT-T float weights under timm's names, 10 classes, as {'model': state_dict}."""
    torch.manual_seed(1)
    params = dict(build_model(CONFIG).named_parameters())
    timm_state = {timm: params[ours].detach() for ours, timm in parameter_names(CONFIG).items()}
    path = tmp_path_factory.mktemp("fp") / "deit_tiny_fp.pth"
    torch.save({"model": timm_state}, path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """ImageFolder layout: 2 classes x 2 images of odd sizes."""
    root = tmp_path_factory.mktemp("calib")
    for label in ("cat", "dog"):
        (root / label).mkdir()
        for i, size in enumerate([(40, 48), (64, 36)]):
            pixels = torch.randint(0, 255, (*size[::-1], 3), dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


def test_flat_folder_batches_are_preprocessed(tmp_path):
    for i, size in enumerate([(40, 48), (64, 36), (50, 50)]):
        Image.new("RGB", size, (255, 0, 128)).save(tmp_path / f"{i}.jpg")
    (tmp_path / "._0.jpg").write_bytes(b"macOS metadata, not an image")
    batches = list(folder_batches(tmp_path, CONFIG, n=5, batch=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32)]
    red = (1.0 - 0.485) / 0.229  # ImageNet normalisation of a full red channel
    assert torch.allclose(batches[1][0, 0], torch.full((32, 32), red), atol=0.05)


def test_quantizes_timm_weights_on_image_folder(fp_weights, image_folder, tmp_path):
    out = tmp_path / "q.pth"
    result = run("deit_tiny", "--weights", fp_weights, "--calib", image_folder, "-o", out,
                 "--img-size", "32", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    model, info = load_checkpoint(out)
    assert info.config == CONFIG  # 10 classes, taken from the weights' classifier
    assert info.meta["calibration"]["num_images"] == 4
    assert info.meta["calibration"]["num_batches"] == 2
    timm_state = torch.load(fp_weights, weights_only=True)["model"]
    assert torch.equal(model.head.weight, timm_state["head.weight"])


def test_random_init_overwrites_with_force(tmp_path):
    out = tmp_path / "q.pth"
    out.write_bytes(b"old")
    result = run("deit_tiny", "--random-init", "--calib", "random", *SMALL, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert "note:" in result.stderr
    model, info = load_checkpoint(out)
    assert info.meta["weights"] == "random-init" and info.config.img_size == 32
    logits, _ = model.forward_integer(torch.randn(1, 3, 32, 32))
    assert logits.shape == (1, 1000)


def test_default_calibration_and_image_counting_bar(tmp_path):
    out = tmp_path / "q.pth"
    result = run("deit_tiny", "--random-init", "--calib", "random", "--img-size", "32",
                 "-o", out)
    assert result.exit_code == 0, result.output
    _, info = load_checkpoint(out)
    calibration = info.meta["calibration"]
    assert (calibration["num_batches"], calibration["batch_size"]) == (
        DEFAULT_CALIB_BATCHES, DEFAULT_CALIB_BATCH_SIZE)
    assert calibration["num_images"] == DEFAULT_CALIB_BATCHES * DEFAULT_CALIB_BATCH_SIZE

    class Bar:
        n = 0

        def update(self, count):
            self.n += count

    bar = Bar()
    seen = []
    for _batch in _counted(iter([torch.zeros(3, 1), torch.zeros(2, 1)]), bar):
        seen.append(bar.n)  # the bar moves once the batch has been run
    assert seen == [0, 3] and bar.n == 5


def test_refuses_existing_output_without_force(tmp_path):
    out = tmp_path / "q.pth"
    out.write_bytes(b"keep")
    result = run("deit_tiny", "--random-init", "--calib", "random", *SMALL, "-o", out)
    assert result.exit_code == 1 and "--force" in result.stderr
    assert out.read_bytes() == b"keep"


@pytest.mark.parametrize("args, phrases", [
    (["--calib", "random"], ["--weights FILE", "--random-init"]),
    (["--random-init", "--weights", "fp.pth", "--calib", "random"], ["not both"]),
    (["--weights", "missing.pth", "--calib", "random"], ["missing.pth", "no such file"]),
    (["--random-init", "--calib", "no_such_dir"], ["no_such_dir", "does not exist"]),
])
def test_bad_options(args, phrases, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "q.pth"
    assert_fails(run("deit_tiny", *args, *SMALL, "-o", out), out, *phrases)


def test_unknown_model(tmp_path):
    out = tmp_path / "q.pth"
    result = run("deit_huge", "--random-init", "--calib", "random", *SMALL, "-o", out)
    assert_fails(result, out, "unknown model 'deit_huge'")


def test_empty_calibration_folder(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    out = tmp_path / "q.pth"
    result = run("deit_tiny", "--random-init", "--calib", tmp_path / "empty", *SMALL, "-o", out)
    assert_fails(result, out, "holds no images")


def test_unreadable_image_is_named(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "q.pth"
    result = run("deit_tiny", "--random-init", "--calib", tmp_path / "imgs", *SMALL, "-o", out)
    assert_fails(result, out, "broken.jpg")


def test_weights_file_with_code_is_refused(tmp_path):
    torch.save({"model": {"w": torch.ones(1)}, "f": print}, tmp_path / "fp.pth")
    out = tmp_path / "q.pth"
    result = run("deit_tiny", "--weights", tmp_path / "fp.pth", "--calib", "random", *SMALL,
                 "-o", out)
    assert_fails(result, out, "fp.pth", "refused")


def test_quantized_checkpoint_as_weights(tmp_path):
    config = model_config("deit_tiny", img_size=32, depth=1)
    model = calibrate(build_model(config), random_batches(config, 1, 2))
    save_checkpoint(model, tmp_path / "int.pth")
    out = tmp_path / "q.pth"
    result = run("deit_tiny", "--weights", tmp_path / "int.pth", "--calib", "random", *SMALL,
                 "-o", out)
    assert_fails(result, out, "already an I-ViT quantized checkpoint")


def test_weights_of_other_model(fp_weights, tmp_path):
    out = tmp_path / "q.pth"
    result = run("deit_small", "--weights", fp_weights, "--calib", "random", *SMALL, "-o", out)
    assert_fails(result, out, "do not fit")


def test_console_script(tmp_path):
    """The installed entry point: success writes a loadable file; an error is one line on
    stderr with status 1."""
    script = Path(sys.executable).parent / "ivit-quantize"
    out = tmp_path / "q.pth"
    args = [script, "deit_tiny", "--random-init", "--calib", "random", *SMALL, "-o", out]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}") and load_checkpoint(out)
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"ivit-quantize: error: {out} exists; pass --force to overwrite it"]
