"""A checkpoint as I-ViT's public release saves it (raw state_dict, no metadata, scales as []
and per channel) of a ViT with 4 heads of 24: its shapes do not tell the head count and no
convention fits embed_dim 96, so loading and compiling refuse and name --num-heads; with the
head count given, the integer reference is the 4-head model's and the artifact equals it bit
for bit. A 384-dim model follows timm's 64-dim heads: it loads, and says so on stderr and in
the artifact's manifest."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import images, public_release_state

import ivit_tvm
from ivit_tvm.artifact import MANIFEST
from ivit_tvm.checkpoint import AssumedConfigWarning, CheckpointError, load_checkpoint
from ivit_tvm.cli.compile import compile_cmd
from ivit_tvm.models import ViTConfig
from ivit_tvm.ptq import random_calibrated

FOUR_HEADS = ViTConfig(img_size=32, patch_size=4, embed_dim=96, depth=2, num_heads=4,
                       num_classes=10)
SIX_HEADS = ViTConfig(img_size=16, patch_size=8, embed_dim=384, depth=1, num_heads=6,
                      num_classes=10)


@functools.cache
def model(config):
    return random_calibrated(config, seed=3)


def release_file(config, folder: Path) -> Path:
    path = folder / f"release_{config.embed_dim}.pth"
    torch.save(public_release_state(model(config)), path)
    return path


def compile_cli(path: Path, out: Path, *options: str):
    return CliRunner().invoke(compile_cmd, [str(path), "--target", "llvm", "-o", str(out),
                                            "--quiet", *options])


def test_load_without_head_count_refuses_naming_the_option(tmp_path):
    path = release_file(FOUR_HEADS, tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "--num-heads" in message and "embed_dim 96" in message


def test_compile_without_head_count_refuses_and_leaves_nothing(tmp_path):
    path = release_file(FOUR_HEADS, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(tmp_path.rglob("*"))
    result = compile_cli(path, out / "model.ivit")
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.startswith("ivit-compile: error: ") and "\n" not in line
    assert str(path) in line and "--num-heads" in line
    assert sorted(tmp_path.rglob("*")) == before


def test_given_head_count_gives_the_four_head_models_integer_logits(tmp_path):
    path = release_file(FOUR_HEADS, tmp_path)
    loaded, info = load_checkpoint(path, num_heads=4)
    assert info.config == FOUR_HEADS and info.assumed == {}
    x = images(FOUR_HEADS, seed=21, batch=4)
    logits, scale = loaded.forward_integer(x)
    ref_logits, ref_scale = model(FOUR_HEADS).forward_integer(x)
    assert torch.equal(logits, ref_logits) and torch.equal(scale, ref_scale)


@pytest.mark.parametrize("options", [["--num-heads", "4"], ["--config", "num_heads=4"]],
                         ids=["num-heads", "config"])
def test_compiled_with_head_count_equals_the_reference(options, tmp_path):
    path = release_file(FOUR_HEADS, tmp_path)
    out = tmp_path / "four.ivit"
    result = compile_cli(path, out, *options)
    assert result.exit_code == 0, result.output
    assert "note:" not in result.stderr  # given, not assumed
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["num_heads"] == 4 and manifest["assumed"] == {}
    x = images(FOUR_HEADS, seed=22, batch=5)
    np.testing.assert_array_equal(ivit_tvm.load(out).run_int(x.numpy())[0],
                                  model(FOUR_HEADS).forward_integer(x)[0].numpy())


def test_convention_is_announced_by_the_library(tmp_path):
    path = release_file(SIX_HEADS, tmp_path)
    with pytest.warns(AssumedConfigWarning, match="num_heads=6 taken from timm's 64-dim-head"):
        loaded, info = load_checkpoint(path)
    assert info.config == SIX_HEADS and "num_heads" in info.assumed


def test_convention_is_announced_on_stderr_and_in_the_manifest(tmp_path):
    path = release_file(SIX_HEADS, tmp_path)
    out = tmp_path / "six.ivit"
    result = compile_cli(path, out)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "note:" in line]
    assert notes == [f"ivit-compile: note: {path.name} has no metadata: num_heads=6 taken from "
                     "timm's 64-dim-head convention (embed_dim 384); pass --num-heads to "
                     "override"]
    assumed = json.loads((out / MANIFEST).read_text())["assumed"]
    assert assumed == {"num_heads": "6 taken from timm's 64-dim-head convention (embed_dim 384)"}
    x = images(SIX_HEADS, seed=23, batch=2)
    np.testing.assert_array_equal(ivit_tvm.load(out).run_int(x.numpy())[0],
                                  model(SIX_HEADS).forward_integer(x)[0].numpy())
