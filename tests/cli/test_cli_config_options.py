"""--num-heads and --config on every command that loads a checkpoint (ivit-compile, ivit-eval,
ivit-qat): parsed, checked against the configuration class and the file, and passed to
load_checkpoint; every bad value is one error line naming the key, exit status 1, nothing
written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import DEIT, public_release_state, quantized

from ivit_tvm.checkpoint import save_checkpoint
from ivit_tvm.cli.common import given_fields
from ivit_tvm.cli.compile import compile_cmd
from ivit_tvm.cli.eval import eval_cmd
from ivit_tvm.cli.qat import qat_cmd
from ivit_tvm.models import ViTConfig
from ivit_tvm.ptq import random_calibrated

FOUR_HEADS = ViTConfig(img_size=32, patch_size=4, embed_dim=96, depth=1, num_heads=4,
                       num_classes=10)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpts")
    release = folder / "release.pth"
    torch.save(public_release_state(random_calibrated(FOUR_HEADS, seed=1)), release)
    return {"release": release, "meta": save_checkpoint(quantized(DEIT), folder / "deit.pth")}


def invoke(command, checkpoint: Path, tmp_path: Path, *options: str):
    """Run a command on `checkpoint`; returns (result, the one error line); checks that the
    output folder's parent did not change."""
    parent = tmp_path / "work"
    parent.mkdir()
    (parent / "data").mkdir()
    before = sorted(parent.rglob("*"))
    args = {compile_cmd: ["--target", "llvm", "-o", str(parent / "m.ivit"), "--quiet"],
            eval_cmd: ["--data", str(parent / "data"), "--no-artifact", "--quiet"],
            qat_cmd: ["--data", str(parent / "data"), "-o", str(parent / "q.pth"), "--quiet"]}
    result = CliRunner().invoke(command, [str(checkpoint), *args[command], *options])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command.name}: error: "), result.stderr
    assert sorted(parent.rglob("*")) == before
    return lines[0]


BAD = {  # id: (file, options, phrases of the error line)
    "unknown-key": ("release", ["--config", "depht=3"],
                    ["unknown vit config field(s) ['depht']", "'depth'", "'num_heads'"]),
    "not-an-integer": ("release", ["--config", "num_heads=four"], ["num_heads='four'",
                                                                   "not an integer"]),
    "not-dividing": ("release", ["--num-heads", "5"], ["num_heads=5", "embed_dim 96"]),
    "contradicts-shapes": ("release", ["--num-heads", "4", "--config", "embed_dim=100"],
                           ["embed_dim=100", "embed_dim=96"]),
    "contradicts-metadata": ("meta", ["--num-heads", "4"], ["num_heads=4", "metadata",
                                                             "num_heads=3"]),
    "no-value": ("release", ["--config", "num_heads"], ["--config 'num_heads'", "KEY=VALUE"]),
    "disagreeing-options": ("release", ["--num-heads", "4", "--config", "num_heads=2"],
                            ["--num-heads 4", "num_heads=2", "disagree"]),
    "no-head-count": ("release", [], ["embed_dim 96", "--num-heads"]),
}


@pytest.mark.parametrize("command", [compile_cmd, eval_cmd, qat_cmd],
                         ids=["compile", "eval", "qat"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_fields_are_refused_naming_the_key(case, command, files, tmp_path):
    name, options, phrases = BAD[case]
    line = invoke(command, files[name], tmp_path, *options)
    assert all(p in line for p in phrases), line


@pytest.mark.parametrize("items, num_heads, fields", [
    (("num_heads=4",), None, {"num_heads": "4"}),
    (("num_heads=3,6,12,24,window_size=7",), None,
     {"num_heads": "3,6,12,24", "window_size": "7"}),
    (("mlp_ratio=2.0", "qkv_bias=false"), "4",
     {"mlp_ratio": "2.0", "qkv_bias": "false", "num_heads": "4"}),
], ids=["one", "list-value", "repeated-and-num-heads"])
def test_config_items_parse_into_fields(items, num_heads, fields):
    assert given_fields(num_heads, items) == fields
