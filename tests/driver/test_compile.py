"""ivit-compile for llvm: whole models bit-exact against the PyTorch integer reference, one
artifact for every batch size, the public release's checkpoint format, the runtime without
PyTorch, and clear errors with nothing half-written."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from support import DEIT, SWIN, images, public_release_state, quantized

import ivit_tvm
from ivit_tvm.artifact import LIBRARY, MANIFEST, ArtifactError
from ivit_tvm.checkpoint import save_checkpoint
from ivit_tvm.cli.compile import compile_cmd
from ivit_tvm.cli.run import run_cmd
from ivit_tvm.compile import compile_model, make_target

LLVM = make_target("llvm")


@functools.cache
def artifact(config, root: str) -> Path:
    """One dynamic-batch llvm artifact per reduced model, shared by the tests."""
    out = Path(root) / f"{config.arch}.ivit"
    compile_model(quantized(config), LLVM, out, progress=False)
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
@pytest.mark.parametrize("batch", [1, 3])
def test_llvm_logits_equal_integer_reference(config, batch, root):
    compiled = ivit_tvm.load(artifact(config, root))
    x = images(config, seed=batch, batch=batch)
    q_logits, scale = compiled.run_int(x.numpy())
    ref_logits, ref_scale = quantized(config).forward_integer(x)
    np.testing.assert_array_equal(q_logits, ref_logits.numpy())
    np.testing.assert_array_equal(scale, ref_scale.numpy())


@pytest.mark.parametrize("config", [DEIT, SWIN], ids=["deit", "swin"])
def test_int8_entry_point_matches_float_entry(config, root):
    compiled = ivit_tvm.load(artifact(config, root))
    model = quantized(config)
    x = images(config, seed=7, batch=2)
    q_images = model.qact_input.quantize(x).numpy()
    np.testing.assert_array_equal(compiled.run_int8(q_images), compiled.run_int(x.numpy())[0])


def test_extreme_images_stay_exact(root):
    """Saturating inputs (every pixel at the int8 clamp) and constant images."""
    compiled = ivit_tvm.load(artifact(DEIT, root))
    model = quantized(DEIT)
    x = torch.stack([torch.full((3, 32, 32), 1e6), torch.full((3, 32, 32), -1e6),
                     torch.zeros(3, 32, 32)])
    np.testing.assert_array_equal(compiled.run_int(x.numpy())[0],
                                  model.forward_integer(x)[0].numpy())


def test_float_logits_are_int_logits_times_scale(root):
    compiled = ivit_tvm.load(artifact(DEIT, root))
    x = images(DEIT, seed=3).numpy()
    q_logits, scale = compiled.run_int(x)
    np.testing.assert_array_equal(compiled.run(x), q_logits.astype(np.float32) * scale)


def test_manifest_records_config_scales_and_versions(root):
    import json

    meta = json.loads((artifact(DEIT, root) / MANIFEST).read_text())
    assert meta["config"]["embed_dim"] == DEIT.embed_dim
    assert meta["input_shape"] == [-1, 3, 32, 32]
    assert len(meta["logits_scale"]) == DEIT.num_classes
    assert {"tvm", "torch", "ivit_tvm"} <= set(meta["versions"])


def test_public_release_checkpoint_compiles_and_matches(tmp_path):
    path = tmp_path / "public.pth"
    torch.save(public_release_state(quantized(DEIT)), path)  # raw state_dict, [] scales
    out = tmp_path / "public.ivit"
    result = CliRunner().invoke(compile_cmd, [str(path), "--target", "llvm", "-o", str(out),
                                              "--model", "deit_tiny", "--quiet"])
    assert result.exit_code == 0, result.output
    x = images(DEIT, seed=11)
    np.testing.assert_array_equal(ivit_tvm.load(out).run_int(x.numpy())[0],
                                  quantized(DEIT).forward_integer(x)[0].numpy())


def test_runtime_needs_neither_torch_nor_the_compiler(root):
    """Run the artifact in a process where importing torch fails (as on a machine without it)
    and TVM loads its runtime library only."""
    out = artifact(DEIT, root)
    script = textwrap.dedent(f"""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is not installed here")

        sys.meta_path.insert(0, NoTorch())
        import numpy as np, ivit_tvm
        model = ivit_tvm.load({str(out)!r})
        logits = model.run(np.zeros((2, 3, 32, 32), np.float32))
        assert logits.shape == (2, 10), logits.shape
        assert "tvm.relax" not in sys.modules, "the compiler was imported"
    """)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.fixture(scope="module")
def deit_checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(quantized(DEIT), tmp_path_factory.mktemp("ckpt") / "deit.pth")


def invoke_compile(*args):
    return CliRunner().invoke(compile_cmd, [*map(str, args), "--quiet"])


def test_compile_refuses_existing_output_without_force(deit_checkpoint, tmp_path):
    out = tmp_path / "exists.ivit"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke_compile(deit_checkpoint, "--target", "llvm", "-o", out)
    assert result.exit_code == 1
    assert "exists" in result.output and "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_compile_force_replaces_output(deit_checkpoint, tmp_path):
    out = tmp_path / "replace.ivit"
    out.mkdir()
    (out / MANIFEST).write_text("{}")  # an (old) artifact: --force replaces only those
    (out / "keep.txt").write_text("old artifact's file")
    result = invoke_compile(deit_checkpoint, "--target", "llvm", "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert (out / LIBRARY).is_file() and not (out / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replace.ivit"]


def test_compile_rejects_unknown_arch(deit_checkpoint, tmp_path):
    out = tmp_path / "arch.ivit"
    result = invoke_compile(deit_checkpoint, "--target", "cuda", "--arch", "sm_9x", "-o", out)
    assert result.exit_code != 0 and "sm_9x" in result.output
    assert not out.exists()


def test_compile_rejects_unsupported_architecture(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)},
               path)
    out = tmp_path / "resnet.ivit"
    result = invoke_compile(path, "--target", "llvm", "-o", out)
    assert result.exit_code == 1 and str(path) in result.output
    assert not out.exists() and not list(tmp_path.glob(".resnet.ivit*"))


def test_failed_build_leaves_nothing(deit_checkpoint, tmp_path, monkeypatch):
    import dataclasses

    from ivit_tvm.schedules.backend import get_backend

    import ivit_tvm.compile as compile_module

    def broken_export(*args, **kwargs):
        raise OSError("disk full")

    broken = dataclasses.replace(get_backend("llvm"), export=broken_export)
    monkeypatch.setattr(compile_module, "get_backend", lambda kind: broken)
    out = tmp_path / "broken.ivit"
    result = invoke_compile(deit_checkpoint, "--target", "llvm", "-o", out)
    assert result.exit_code == 1 and "disk full" in result.output
    assert list(tmp_path.iterdir()) == []


def test_run_prints_top_classes(root):
    result = CliRunner().invoke(run_cmd, [str(artifact(DEIT, root)), "--batch", "2",
                                          "--top", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("image 0:") and lines[0].count(":") == 4


def test_run_rejects_wrong_image_shape(root, tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 3, 64, 64), np.float32))
    result = CliRunner().invoke(run_cmd, [str(artifact(DEIT, root)), "--images", str(bad)])
    assert result.exit_code == 1 and "(B, 3, 32, 32)" in result.output


def test_load_rejects_a_folder_that_is_no_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="incomplete artifact"):
        ivit_tvm.load(tmp_path)
