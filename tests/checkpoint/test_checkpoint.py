"""Checkpoints: exact save/load round trips with frozen scales, the public release's layout,
configuration inference without metadata, and one-line errors for every bad input.
Reduced models (2 blocks / 2 stages, small images)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import pytest
import torch
from support import DEIT, SWIN, assert_same_outputs, images, public_release_state, quantized

from ivit_tvm.checkpoint import (
    AssumedConfigWarning,
    CheckpointError,
    infer_config,
    load_checkpoint,
    save_checkpoint,
)
from ivit_tvm.models import SwinConfig, ViTConfig, build_model


@pytest.fixture
def deit():
    return quantized(DEIT)


@pytest.fixture(scope="module")
def deit_file(tmp_path_factory) -> Path:
    return save_checkpoint(quantized(DEIT), tmp_path_factory.mktemp("ckpt") / "deit.pth")


def error_for(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# Round trips


def test_calibrated_model_is_at_a_fixed_point(deit):
    """After calibrate, a forward changes no buffer: integer buffers match the frozen scales."""
    before = {k: v.clone() for k, v in deit.state_dict().items()}
    with torch.no_grad():
        deit(images(DEIT, seed=5) * 20)
    assert all(torch.equal(v, deit.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_round_trip_gives_bit_identical_outputs(config, tmp_path):
    model = quantized(config)
    loaded, info = load_checkpoint(save_checkpoint(model, tmp_path / "m.pth"))
    assert info.config == config and info.config_source == "metadata"
    assert_same_outputs(model, loaded, config)


def test_reloaded_scales_stay_frozen_on_new_data(deit, deit_file):
    loaded, _ = load_checkpoint(deit_file)
    before = {k: v.clone() for k, v in loaded.state_dict().items() if "act_scaling" in k}
    with torch.no_grad():
        loaded(images(DEIT, seed=7) * 50 + 10)  # a range far from the calibration data
    after = loaded.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert_same_outputs(deit, loaded, DEIT)


def test_file_holds_state_dict_and_metadata(deit, deit_file):
    saved = torch.load(deit_file, weights_only=True)
    assert set(saved) == {"model", "ivit_meta"}
    assert list(saved["model"]) == list(deit.state_dict())
    meta = saved["ivit_meta"]
    assert meta["format_version"] == 1 and meta["config"] == DEIT.to_dict()
    assert meta["act_bits"]["blocks.0.qact2"] == 16 and meta["created_by"].startswith("ivit-tvm")


def test_metadata_extra_is_saved(deit, tmp_path):
    path = save_checkpoint(deit, tmp_path / "m.pth", metadata_extra={"note": "calib 1k"})
    assert load_checkpoint(path)[1].meta["note"] == "calib 1k"


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_public_release_layout_loads_with_same_outputs(config, tmp_path):
    model = quantized(config)
    torch.save(public_release_state(model), tmp_path / "raw.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded, info = load_checkpoint(tmp_path / "raw.pth")
    # ViT heads follow timm's 64-dim convention, announced; Swin's tables tell its heads
    announced = {"num_heads"} if config is DEIT else set()
    assert set(info.assumed) == announced
    assert [type(w.message) for w in caught] == [AssumedConfigWarning] * len(announced)
    assert info.config == config and info.config_source == "inferred from shapes"
    assert "qact_input.act_scaling_factor" in info.reshaped
    assert_same_outputs(model, loaded, config)


def test_wrapped_training_checkpoint_loads(deit, tmp_path):
    """DeiT-style {'model', 'args', ...} from DataParallel training ('module.' prefix)."""
    state = {f"module.{k}": v for k, v in deit.state_dict().items()}
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(lr=1e-5)},
               tmp_path / "train.pth")
    with pytest.warns(AssumedConfigWarning, match="num_heads=3"):
        loaded = load_checkpoint(tmp_path / "train.pth")[0]
    assert_same_outputs(deit, loaded, DEIT)


def test_state_dict_entry_loads(deit, tmp_path):
    torch.save({"state_dict": deit.state_dict()}, tmp_path / "sd.pth")
    with pytest.warns(AssumedConfigWarning, match="num_heads=3"):
        loaded = load_checkpoint(tmp_path / "sd.pth")[0]
    assert_same_outputs(deit, loaded, DEIT)


# Configuration inference (no metadata)


@pytest.mark.parametrize("config", [
    DEIT,
    ViTConfig(img_size=48, patch_size=16, embed_dim=128, depth=3, num_heads=2, mlp_ratio=2.0,
              qkv_bias=False, num_classes=7),
    SWIN,
    SwinConfig(img_size=32, patch_size=4, embed_dim=32, depths=(2, 2, 1), num_heads=(1, 2, 4),
               window_size=4, mlp_ratio=2.0, num_classes=5),  # last stage: window 2 = res
    SwinConfig(img_size=32, patch_size=4, embed_dim=32, depths=(1, 1, 1), num_heads=(1, 2, 4),
               window_size=4, num_classes=5),  # no shifted block: no attn_mask to read
], ids=["deit", "vit-head64", "swin", "swin-small-window", "swin-no-mask"])
def test_config_is_inferred_from_keys_and_shapes(config):
    assert infer_config(build_model(config).state_dict()) == config


def test_model_name_supplies_vit_heads():
    state = build_model(DEIT).state_dict()
    assert infer_config(state, name="deit_tiny_patch16_224").num_heads == 3


def test_override_sets_heads_shapes_cannot_tell(tmp_path):
    config = ViTConfig(img_size=32, patch_size=8, embed_dim=128, depth=1, num_heads=4,
                       num_classes=10)
    model = quantized(config)
    torch.save(model.state_dict(), tmp_path / "raw.pth")
    loaded, info = load_checkpoint(tmp_path / "raw.pth", num_heads=4)
    assert info.config == config and "num_heads" in info.config_source
    assert_same_outputs(model, loaded, config)


# Errors: one line naming the file, the key and the shapes


def test_missing_file(tmp_path):
    assert "no such file" in error_for(tmp_path / "nope.pth")


def test_folder_is_not_a_checkpoint(tmp_path):
    assert "is a folder" in error_for(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.pth").touch()
    assert "empty" in error_for(tmp_path / "e.pth")


def test_text_file(tmp_path):
    (tmp_path / "notes.pth").write_text("hello world\n")
    message = error_for(tmp_path / "notes.pth")
    assert "notes.pth" in message and "text file" in message and "hello world" in message


@pytest.mark.parametrize("obj, found", [
    (torch.ones(3), "a single tensor of shape [3]"),
    ([1, 2], "a list of 2 items"),
    ({"epoch": 3}, "non-tensor entries epoch"),
])
def test_file_without_state_dict(obj, found, tmp_path):
    torch.save(obj, tmp_path / "x.pth")
    assert found in error_for(tmp_path / "x.pth")


class RunsCode:
    """Pickles as a call to os.system: a weights-only load must never make that call."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"model": {"w": torch.ones(1)}, "hook": RunsCode(marker)}, tmp_path / "evil.pth")
    message = error_for(tmp_path / "evil.pth")
    assert "refused" in message and "system" in message
    assert not marker.exists()


def test_truncated_file(deit_file, tmp_path):
    data = deit_file.read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    message = error_for(tmp_path / "half.pth")
    assert "half.pth" in message and "truncated or corrupt" in message


def test_missing_keys_are_named(deit, tmp_path):
    state = {k: v for k, v in deit.state_dict().items() if not k.startswith("blocks.1.mlp.")}
    torch.save(state, tmp_path / "cut.pth")
    message = error_for(tmp_path / "cut.pth")
    assert "cut.pth" in message and "missing" in message
    assert "blocks.1.mlp.fc1.weight" in message and "more" in message


def test_unexpected_keys_are_named(deit, tmp_path):
    torch.save({**deit.state_dict(), "extra.weight": torch.ones(2)}, tmp_path / "x.pth")
    message = error_for(tmp_path / "x.pth")
    assert "unexpected" in message and "extra.weight" in message


def test_given_field_contradicting_the_shapes_is_named(deit_file):
    message = error_for(deit_file, num_classes=5)
    assert "num_classes=5" in message and "num_classes=10" in message


def test_per_tensor_scale_with_channels_is_a_shape_error(deit, tmp_path):
    state = {**deit.state_dict(), "blocks.0.qact1.act_scaling_factor": torch.ones(3)}
    torch.save(state, tmp_path / "x.pth")
    message = error_for(tmp_path / "x.pth")
    assert "'blocks.0.qact1.act_scaling_factor'" in message and "[3]" in message


def test_unknown_model_name(deit_file):
    assert "unknown model 'nope'" in error_for(deit_file, name="nope")


def test_name_of_other_architecture(deit, tmp_path):
    torch.save(deit.state_dict(), tmp_path / "raw.pth")
    message = error_for(tmp_path / "raw.pth", name="swin_tiny")
    assert "vit model" in message and "swin_tiny" in message


def test_unknown_override(deit_file):
    assert "unknown vit config field(s) ['depht']" in error_for(deit_file, depht=3)


def test_float_checkpoint_is_not_quantized(tmp_path):
    state = {k: v for k, v in build_model(DEIT).named_parameters()}
    torch.save(state, tmp_path / "fp.pth")
    message = error_for(tmp_path / "fp.pth")
    assert "float weights" in message and "ivit-quantize" in message


def test_uncalibrated_checkpoint(tmp_path):
    torch.save(build_model(DEIT).state_dict(), tmp_path / "fresh.pth")
    message = error_for(tmp_path / "fresh.pth")
    assert "never calibrated" in message and "qact_input" in message


def test_newer_format_version(deit, tmp_path):
    torch.save({"model": deit.state_dict(), "ivit_meta": {"format_version": 9}},
               tmp_path / "new.pth")
    assert "upgrade ivit-tvm" in error_for(tmp_path / "new.pth")


# Saving


def test_save_refuses_uncalibrated_model(tmp_path):
    with pytest.raises(CheckpointError, match="not calibrated"):
        save_checkpoint(build_model(DEIT), tmp_path / "m.pth")
    assert not (tmp_path / "m.pth").exists()


def test_save_into_missing_folder(deit, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(deit, tmp_path / "no" / "m.pth")


def test_metadata_extra_cannot_replace_config(deit, tmp_path):
    with pytest.raises(ValueError, match="config"):
        save_checkpoint(deit, tmp_path / "m.pth", metadata_extra={"config": {}})


def test_failed_save_keeps_old_file_and_leaves_no_temp(deit, tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    path.write_bytes(b"old")

    def fail_midway(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(deit, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.pth"]
