"""Loadable CUDA libraries, with or without a GPU, and the CUDA backend's build and export.

With a driver loaded here, `build_library` builds in process (nvcc kernels) and `write`
exports that executable. Without one, TVM would export a .so holding CUDA source that no
machine can load ("loader ... cuda not registered"), so the one build of a compile runs in a
subprocess (`python -m ivit_tvm.schedules.cuda.export_worker`) that sees a driver stub
(driver_stub.c, built with the host C compiler) as libcuda.so.1: the runtime library loads,
codegen calls nvcc and embeds a fatbin (SASS for the target arch plus PTX), and the .so it
writes loads wherever a real driver is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import tvm

from ..targets import TargetInfo, check_cuda_arch, cuda_driver_loaded
from .build import build_cuda, device_modules
from .gemm import GemmStrategy
from .toolkit import find_cuda_home

STUB_SOURCE = Path(__file__).with_name("driver_stub.c")
WORKER = "ivit_tvm.schedules.cuda.export_worker"


@dataclass
class ArtifactInfo:
    """What a CUDA library export wrote."""

    path: Path
    arch: str
    size_bytes: int
    device_modules: list[str]  # kinds of the modules inside, e.g. ["llvm", "cuda"]
    kernel_format: str  # "fatbin" (SASS for arch + PTX)
    driver: str  # "real" or "stub"
    gemms: list[dict] = field(default_factory=list)  # gemm.gemm_choices: strategy, tile each


@dataclass
class InProcessBuild:
    """An executable whose kernels this process compiled (a driver is loaded here)."""

    executable: tvm.runtime.Executable
    arch: str
    gemms: list[dict] = field(default_factory=list)

    def write(self, path: Path) -> ArtifactInfo:
        self.executable.export_library(str(path))
        kinds = [m.kind for m in device_modules(self.executable, None)]
        return ArtifactInfo(Path(path), self.arch, Path(path).stat().st_size, kinds, "fatbin",
                            "real", self.gemms)


@dataclass
class SubprocessBuild:
    """A library the stub subprocess built and wrote into a temporary folder of its own."""

    written: ArtifactInfo
    folder: tempfile.TemporaryDirectory

    @property
    def gemms(self) -> list[dict]:
        """The strategy and tile of each GEMM (gemm.gemm_choices), for the manifest."""
        return self.written.gemms

    def write(self, path: Path) -> ArtifactInfo:
        shutil.move(self.written.path, path)
        self.folder.cleanup()
        return replace(self.written, path=Path(path))


def build_library(
    mod: tvm.IRModule, info: TargetInfo, strategy: GemmStrategy = GemmStrategy.AUTO
) -> InProcessBuild | SubprocessBuild:
    """The CUDA backend's build, once per compile: in process where a driver is loaded, else
    build and export together under the driver stub."""
    if info.caps.cuda_driver:
        gemms: list[dict] = []
        executable = build_cuda(mod, info, strategy, gemm_record=gemms)
        return InProcessBuild(executable, info.caps.cuda_arch, gemms)
    folder = tempfile.TemporaryDirectory(prefix="ivit_cuda_")
    written = export_cuda_library(mod, info.target, Path(folder.name) / "library.so", strategy)
    return SubprocessBuild(written, folder)


def write_library(built: InProcessBuild | SubprocessBuild, info: TargetInfo, path: Path) -> str:
    """The CUDA backend's export: write the built library to `path`; say what it holds."""
    return describe(built.write(path))


def describe(info: ArtifactInfo) -> str:
    """One sentence: what the library holds and where it runs."""
    capability = check_cuda_arch(info.arch).removeprefix("sm_")
    digits = capability.rstrip("af")
    version = f"{digits[:-1]}.{digits[-1]}"
    if capability == digits:
        runs_on = f"compute capability {version} and newer (PTX JIT beyond {digits[:-1]}.x)"
    else:  # sm_90a: architecture-specific features, this exact GPU generation only
        runs_on = f"compute capability {version} only ({info.arch})"
    built = "without a GPU (driver stub)" if info.driver == "stub" else "with this host's driver"
    return (
        f"CUDA library: x86-64 host code and kernels as a fatbin (SASS {info.arch} + PTX), "
        f"compiled with nvcc {built}; runs with the TVM runtime (libtvm_runtime and "
        f"libtvm_runtime_cuda) on NVIDIA GPUs of {runs_on}"
    )


def export_cuda_library(
    mod: tvm.IRModule,
    target: tvm.target.Target,
    path: str | os.PathLike,
    strategy: GemmStrategy = GemmStrategy.AUTO,
    timeout_s: float = 3600,
) -> ArtifactInfo:
    """Build `mod` for CUDA and write a .so with compiled kernels, with or without a GPU.

    The build runs in a subprocess: with this host's driver when TVM's CUDA runtime loaded
    here, else with the driver stub. Raises if the written library does not load.
    """
    arch = check_cuda_arch(str(target.attrs["arch"]))
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ivit_export_") as tmp:
        tmp = Path(tmp)
        (tmp / "mod.json").write_text(tvm.ir.save_json(mod))
        env = {**os.environ, "CUDA_PATH": str(find_cuda_home()),
               "TVM_FFI_DISABLE_TORCH_C_DLPACK": "1"}  # the worker needs no torch
        driver = "real" if cuda_driver_loaded() else "stub"
        if driver == "stub":
            stub_dir = build_driver_stub(tmp / "stub")
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(stub_dir), env.get("LD_LIBRARY_PATH", "")) if p
            )
        request = {"mod": str(tmp / "mod.json"), "arch": arch, "out": str(path),
                   "strategy": strategy.value}
        proc = subprocess.run(
            [sys.executable, "-m", WORKER, json.dumps(request)],
            env=env, capture_output=True, text=True, timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"CUDA export of {path.name} failed (driver: {driver}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    return ArtifactInfo(path, arch, path.stat().st_size, result["modules"], "fatbin", driver,
                        result.get("gemms", []))


def build_driver_stub(folder: Path) -> Path:
    """Compile driver_stub.c to folder/libcuda.so.1 with the host C compiler; return folder."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc/gcc) to build the CUDA driver stub")
    folder.mkdir(parents=True, exist_ok=True)
    library = folder / "libcuda.so.1"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-Wl,-soname,libcuda.so.1", "-o", str(library),
         str(STUB_SOURCE)],
        check=True, capture_output=True, text=True,
    )
    return folder
