"""Checkpoints whose numbers the integer model cannot use, and files of other architectures:
`ivit-compile` refuses each with one line naming the key, the bad value and the fix, exit
status 1, and leaves the output folder's parent as it was. Before these checks such files
compiled with status 0 (negative or zero scales, weights outside int8) or failed with a
message naming no key ("never calibrated (scale 0)" for a NaN scale, 192 numbers for an Inf
or NaN weight scale)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from support import DEIT, quantized

from ivit_tvm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ivit_tvm.cli.compile import compile_cmd

ACT = "blocks.0.qact1.act_scaling_factor"
W_SCALE = "blocks.0.attn.qkv.fc_scaling_factor"
W_INT = "blocks.0.attn.qkv.weight_integer"
B_INT = "blocks.0.mlp.fc1.bias_integer"
ACT_FIX = "activation scale must be a positive finite number"
W_FIX = "weight scale must be positive and finite in every channel"
INT_FIX = "must hold integers in [-128, 127]"


def _set(index, value):
    def change(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        tensor[index] = value
        return tensor
    return change


# case id: (key, change, phrases the error line must hold)
CASES = {
    "negative-act-scale": (ACT, lambda t: -t, [f"'{ACT}' is -", ACT_FIX]),
    "nan-act-scale": (ACT, _set(0, math.nan), [f"'{ACT}' is nan", ACT_FIX]),
    "inf-act-scale": (ACT, _set(0, math.inf), [f"'{ACT}' is inf", ACT_FIX]),
    "zero-weight-scale": (W_SCALE, _set(5, 0.0), [f"'{W_SCALE}' channel 5 is 0", W_FIX]),
    "negative-weight-scale": (W_SCALE, _set(7, -0.01),
                              [f"'{W_SCALE}' channel 7 is -0.01", W_FIX]),
    "nan-weight-scale": (W_SCALE, _set(5, math.nan), [f"'{W_SCALE}' channel 5 is nan", W_FIX]),
    "inf-weight-scale": (W_SCALE, _set(0, math.inf), [f"'{W_SCALE}' channel 0 is inf", W_FIX]),
    "weight-integer-1000": (W_INT, _set((1, 2), 1000.0),
                            [f"'{W_INT}' at [1, 2] is 1000", INT_FIX]),
    "weight-integer-nan": (W_INT, _set((3, 4), math.nan), [f"'{W_INT}' at [3, 4] is nan",
                                                           INT_FIX]),
    "weight-integer-fraction": (W_INT, _set((0, 0), 0.5), [f"'{W_INT}' at [0, 0] is 0.5",
                                                           INT_FIX]),
    "bias-integer-beyond-int32": (B_INT, _set(2, 2.0**40),
                                  [f"'{B_INT}' channel 2 is 1.09951e+12", "(32 bits)"]),
    "nan-pos-embed": ("pos_embed", _set((0, 3, 9), math.nan),
                      ["'pos_embed' at [0, 3, 9] is nan", "every value must be finite"]),
}


@pytest.fixture(scope="module")
def good_file(tmp_path_factory) -> Path:
    return save_checkpoint(quantized(DEIT), tmp_path_factory.mktemp("good") / "deit.pth")


def corrupted(good_file: Path, folder: Path, key: str, change) -> Path:
    checkpoint = torch.load(good_file, weights_only=True)
    checkpoint["model"][key] = change(checkpoint["model"][key])
    path = folder / "bad.pth"
    torch.save(checkpoint, path)
    return path


def assert_refused(checkpoint: Path, tmp_path: Path, phrases: list[str]) -> str:
    """ivit-compile exits 1 with one error line holding `phrases`; nothing is written."""
    parent = tmp_path / "out"
    parent.mkdir()
    before = sorted(parent.rglob("*"))
    result = CliRunner().invoke(compile_cmd, [str(checkpoint), "--target", "llvm", "-o",
                                              str(parent / "model.ivit"), "--quiet"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ivit-compile: error: "), result.stderr
    assert str(checkpoint) in lines[0] and all(p in lines[0] for p in phrases), lines[0]
    assert sorted(parent.rglob("*")) == before
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_value_is_refused_naming_the_key(case, good_file, tmp_path):
    key, change, phrases = CASES[case]
    path = corrupted(good_file, tmp_path, key, change)
    line = assert_refused(path, tmp_path, phrases)
    assert "ivit-quantize" in line or "re-export" in line  # says what to do
    with pytest.raises(CheckpointError, match="'" + key.replace(".", r"\.") + "'"):
        load_checkpoint(path)


def test_resnet_is_not_a_vision_transformer(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    line = assert_refused(path, tmp_path, ["not a ViT/DeiT/Swin model", "conv1.weight"])
    assert "--weights" not in line
