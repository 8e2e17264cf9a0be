"""A non-editable install works: the wheel holds every package and data file under the project's
two names, and its `ivit-compile` builds the bundled digits model for CUDA without a GPU,
importing nothing from the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", ".ruff_cache", "benchmark-results")
DATA_FILES = ("digits_fp.pth", "digits_ptq.pth", "digits_qat.pth", "digits_split.npz")


def pip(*args: str, cwd: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of a copy of the working tree (so no stale build/ of the repository leaks in)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCES)
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), ".",
        cwd=source)
    (path,) = (root / "dist").glob("ivit_tvm-*.whl")
    return path


@pytest.fixture(scope="module")
def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


@pytest.fixture(scope="module")
def site(wheel: Path) -> Path:
    """The wheel installed into a folder of its own (what `pip install .` puts in a venv)."""
    target = wheel.parent.parent / "site"
    pip("install", "--no-deps", "-q", "--target", str(target), str(wheel), cwd=wheel.parent)
    return target


def test_top_level_packages_are_the_projects_own(names):
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"ivit_tvm", "relay_passes"}


def test_schedules_and_benchmarks_install_inside_ivit_tvm(names):
    assert "ivit_tvm/schedules/__init__.py" in names
    assert "ivit_tvm/benchmarks/__init__.py" in names
    assert "ivit_tvm/cli/compile.py" in names


def test_wheel_holds_the_driver_stub_and_the_bundled_data(names):
    assert "ivit_tvm/schedules/cuda/driver_stub.c" in names
    for file in DATA_FILES:
        assert f"ivit_tvm/data/{file}" in names


def test_installed_ivit_compile_builds_cuda_without_a_gpu(site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import ivit_tvm, ivit_tvm.schedules, relay_passes; "
                               "print(ivit_tvm.__file__, ivit_tvm.schedules.__file__, "
                               "relay_passes.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(site) for p in where.stdout.split()), where.stdout

    out = tmp_path / "digits-cuda"
    done = subprocess.run(
        [sys.executable, str(site / "bin" / "ivit-compile"),
         str(site / "ivit_tvm" / "data" / "digits_qat.pth"), "--target", "cuda", "--arch",
         "sm_90", "-o", str(out), "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "model.so").is_file() and (out / "ivit_artifact.json").is_file()
    gemms = json.loads((out / "ivit_artifact.json").read_text())["gemm_kernels"]
    strategies = {row["primfunc"]: row["strategy"] for row in gemms}
    assert "mma" in strategies.values(), gemms  # sm_90: tensor cores where a tile fits
    assert all(row["tile"] for row in gemms), gemms
