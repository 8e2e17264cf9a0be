"""ivit-eval refuses bad inputs in one line naming the file: an unreadable image in the
ImageFolder, an artifact compiled from another checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ivit_tvm import data
from ivit_tvm.checkpoint import load_checkpoint
from ivit_tvm.cli.eval import eval_cmd


def evaluate(*args):
    torch.set_num_threads(1)
    return CliRunner().invoke(eval_cmd, [str(data.DIGITS_QAT), *map(str, args), "--quiet"])


def digits_folder(root: Path) -> Path:
    """10 class subfolders of one 8x8 digit PNG each."""
    digits, labels = data.load_split("test")
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        data.to_pil(digits[(labels == digit).nonzero()[0][0]]).save(root / str(digit) / "a.png")
    return root


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("workers", [0, 1])  # 1: raised in a DataLoader worker process
def test_truncated_png_is_named(tmp_path, workers):
    root = digits_folder(tmp_path / "images")
    bad = root / "3" / "a.png"
    bad.write_bytes(bad.read_bytes()[:60])  # cut inside its pixel data
    before = listing(tmp_path)
    result = evaluate("--data", root, "--no-artifact", "--workers", workers)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"ivit-eval: error: {bad}: cannot read this image (")
    assert "truncated" in result.output and "replace or remove the file" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert listing(tmp_path) == before


def test_artifact_of_another_checkpoint_is_refused(tmp_path):
    """Same model configuration, another checkpoint (its SHA-256 in the manifest)."""
    root = digits_folder(tmp_path / "images")
    other = tmp_path / "other.ivit"
    other.mkdir()
    (other / "model.so").write_bytes(b"x")
    (other / "ivit_artifact.json").write_text(json.dumps({
        "format_version": 2, "config": load_checkpoint(data.DIGITS_QAT)[1].config.to_dict(),
        "input_scale": 0.1, "input_bits": 8, "input_shape": [-1, 1, 8, 8],
        "logits_scale": [0.1] * 10, "target": {"kind": "llvm"}, "library_bytes": 1,
        "library_sha256": hashlib.sha256(b"x").hexdigest(), "checkpoint_sha256": "0" * 64,
        "source": "/elsewhere/other.pth"}))
    before = listing(tmp_path)
    result = evaluate("--data", root, "--artifact", other)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{other}: compiled from another checkpoint" in result.output
    assert "/elsewhere/other.pth" in result.output and str(data.DIGITS_QAT) in result.output
    assert "pass the artifact compiled from this checkpoint" in result.output
    assert listing(tmp_path) == before
