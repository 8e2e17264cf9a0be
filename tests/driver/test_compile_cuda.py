"""ivit-compile for CUDA without a GPU: one build per compile, counted in compile_seconds."""

from __future__ import annotations

import json
import time

import pytest
import tvm
from ivit_tvm.schedules.cuda import build, export
from support import DEIT, quantized

from ivit_tvm.artifact import LIBRARY, MANIFEST
from ivit_tvm.compile import compile_model, make_target

STUB_SECONDS = 0.3  # the stand-in subprocess build's duration, which compile_seconds must count


@pytest.fixture
def fake_stub_build(monkeypatch):
    """export_cuda_library replaced by a recorder writing a placeholder library; an in-process
    build fails the test (without a driver it would only make CUDA source)."""
    calls = []

    def recorded(mod, target, path, strategy=None):
        calls.append(str(target.attrs["arch"]))
        time.sleep(STUB_SECONDS)
        path.write_bytes(b"library")
        return export.ArtifactInfo(path, "sm_90", 7, ["llvm", "cuda"], "fatbin", "stub")

    def no_in_process_build(*args, **kwargs):
        raise AssertionError("built in process without a driver")

    monkeypatch.setattr(export, "export_cuda_library", recorded)
    monkeypatch.setattr(export, "build_cuda", no_in_process_build)
    monkeypatch.setattr(build, "build_cuda", no_in_process_build)
    return calls


def test_cuda_compile_without_a_driver_builds_once(fake_stub_build, tmp_path):
    info = make_target("cuda", arch="sm_90")
    if info.caps.cuda_driver:
        pytest.skip("a CUDA driver is loaded here: the build runs in process")
    out = tmp_path / "deit.ivit"
    report = compile_model(quantized(DEIT), info, out, progress=False)
    assert fake_stub_build == ["sm_90"]
    assert (out / LIBRARY).read_bytes() == b"library"
    assert "driver stub" in report.contents
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["compile_seconds"]["build"] >= STUB_SECONDS


def test_cuda_target_records_the_arch():
    info = make_target("cuda", arch="sm_80")
    assert isinstance(info.target, tvm.target.Target)
    assert info.caps.cuda_arch == "sm_80"
