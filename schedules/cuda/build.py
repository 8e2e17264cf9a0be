"""Build for CUDA, prove the kernels compile with nvcc, and export loadable artifacts.

Without a GPU (no libcuda.so.1), TVM's CUDA runtime library cannot load and `tvm.compile`
keeps the kernels as CUDA source: the executable is fine for inspection and for nvcc checks
(`compile_kernels`), but `export_library` would write a .so that no machine can load
("loader ... cuda not registered"). `export_cuda_library` therefore exports in a subprocess
that sees a driver stub (driver_stub.c, built with the host C compiler) as libcuda.so.1: the
runtime library loads, codegen calls nvcc and embeds a fatbin (SASS for the target arch plus
PTX), and the .so loads wherever a real driver is.

Kernels are compiled without --use_fast_math: the float entry quantizer divides by its scale,
and an approximate division would break bit-exactness with PyTorch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ..targets import check_cuda_arch
from .gemm import GemmStrategy
from .pipeline import cuda_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
STUB_SOURCE = Path(__file__).with_name("driver_stub.c")
NO_FAST_MATH = {"TVM_CUDA_NVCC_NO_FAST_MATH": "1"}
PTX_PATTERNS = {
    "dp4a": r"\bdp4a\.s32\.s32\b",
    "mma_s8": r"\bmma\.sync\.aligned\.\S*\.s8\.s8\.s32\b",
    "ld_shared": r"\bld\.shared\.",
    "shfl": r"\bshfl\.sync\.",
    "local_memory": r"\.local\s",
}
# Executables built without a driver -> (mod, target, strategy), for export_cuda to rebuild.
_SOURCE_BUILDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def build_cuda(
    mod: tvm.IRModule, target: tvm.target.Target, strategy: GemmStrategy = GemmStrategy.DP4A
) -> tvm.runtime.Executable:
    """tvm.compile with the project's CUDA pipeline.

    Where TVM's CUDA runtime loaded (a driver, real or stub), kernels are compiled with nvcc
    (`nvcc_kernels`); elsewhere the executable keeps them as CUDA source (`cuda_source`).
    """
    pipeline = cuda_pipeline(target, strategy)
    if has_cuda_driver():
        with nvcc_kernels(str(target.attrs["arch"])), target:
            return tvm.compile(mod, target, relax_pipeline=pipeline)
    executable = tvm.compile(mod, target, relax_pipeline=pipeline)
    _SOURCE_BUILDS[executable] = (mod, target, strategy)
    return executable


@contextmanager
def nvcc_kernels(arch: str):
    """While active, TVM compiles CUDA kernels with nvcc, without fast math, to a fatbin
    holding SASS for `arch` and its PTX (which newer GPUs JIT-compile)."""
    import tvm_ffi
    from tvm.support.nvcc import compile_cuda

    capability = check_cuda_arch(arch).removeprefix("sm_")
    gencode = ["-gencode", f"arch=compute_{capability},code=[sm_{capability},compute_{capability}]"]

    def compile_fatbin(code, *_):
        return compile_cuda(code, "fatbin", arch=gencode, compiler="nvcc")

    name = "tvm_callback_cuda_compile"
    previous = tvm_ffi.get_global_func(name, allow_missing=True)
    tvm_ffi.register_global_func(name, compile_fatbin, override=True)
    try:
        with cuda_environment():
            yield
    finally:
        if previous is not None:
            tvm_ffi.register_global_func(name, previous, override=True)


def device_modules(executable, kind: str | None = "cuda") -> list[tvm.runtime.Module]:
    """The runtime modules of `kind` (None: all) in an executable or module, recursively."""
    root = executable.mod if isinstance(executable, tvm.runtime.Executable) else executable
    found, stack = [], [root]
    while stack:
        module = stack.pop()
        if kind is None or module.kind == kind:
            found.append(module)
        stack.extend(module.imports)
    return found


def cuda_source(executable) -> str:
    """The generated CUDA C of an executable built by `build_cuda`."""
    modules = device_modules(executable, "cuda")
    if not modules:
        raise ValueError("the executable holds no CUDA module: was it built for a cuda target?")
    return "\n".join(module.inspect_source() for module in modules)


def has_cuda_driver() -> bool:
    """Whether this process loaded TVM's CUDA runtime (it needs libcuda.so.1, real or stub)."""
    return "tvm_runtime_cuda" in tvm.base._LOADED_LIBS


# ---- the CUDA toolkit and nvcc ----------------------------------------------------------
def find_cuda_home() -> Path:
    """The CUDA toolkit folder: $CUDA_PATH/$CUDA_HOME, else the one the nvcc on PATH runs.

    nvcc may be a wrapper script (`exec /usr/local/cuda-13.0/bin/nvcc "$@"`): its target is
    followed, since NVRTC and nvcc look for headers relative to CUDA_PATH.
    """
    for name in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(name) and _is_toolkit(Path(os.environ[name])):
            return Path(os.environ[name])
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc is not on PATH and CUDA_PATH is unset: install a toolkit")
    nvcc = Path(nvcc).resolve()
    for _ in range(4):  # wrapper scripts calling wrapper scripts
        if _is_toolkit(nvcc.parent.parent):
            return nvcc.parent.parent
        target = _wrapped_program(nvcc)
        if target is None:
            break
        nvcc = target.resolve()
    raise FileNotFoundError(f"cannot find the CUDA toolkit behind {nvcc}: set CUDA_PATH")


def _is_toolkit(path: Path) -> bool:
    nvcc = path / "bin" / "nvcc"
    return (nvcc.is_file() and _wrapped_program(nvcc) is None
            and (path / "include" / "cuda.h").is_file())


def _wrapped_program(script: Path) -> Path | None:
    """The program a small shell wrapper execs, or None for a binary."""
    try:
        text = script.read_bytes()[:4096]
    except OSError:
        return None
    if not text.startswith(b"#!"):
        return None
    match = re.search(rb"exec\s+\"?([^\s\"]+nvcc)\"?", text)
    return Path(match.group(1).decode()) if match else None


@contextmanager
def cuda_environment():
    """CUDA_PATH at the real toolkit, and no fast math, for the duration of a compile."""
    overrides = {"CUDA_PATH": str(find_cuda_home()), **NO_FAST_MATH}
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def compile_kernels(source: str, arch: str, fmt: str = "ptx") -> bytes:
    """Compile generated CUDA C with nvcc for `arch` ("sm_80", ...) to "ptx" or "cubin"."""
    from tvm.support.nvcc import compile_cuda

    check_cuda_arch(arch)
    if fmt not in ("ptx", "cubin"):
        raise ValueError(f'fmt must be "ptx" or "cubin", got {fmt!r}')
    target = tvm.target.Target({"kind": "cuda", "arch": arch})
    with cuda_environment(), target:
        return bytes(compile_cuda(source, fmt, arch=arch, compiler="nvcc"))


# ---- what an artifact holds -------------------------------------------------------------
@dataclass
class KernelReport:
    """Kernels and notable instructions in one compiled artifact."""

    arch: str
    fmt: str
    size_bytes: int
    kernels: list[str]
    instructions: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        counts = ", ".join(f"{name} x{count}" for name, count in self.instructions.items())
        return (
            f"{self.fmt} for {self.arch}: {self.size_bytes} bytes, {len(self.kernels)} kernels"
            + (f"; {counts}" if counts else "")
        )


def report_ptx(ptx: bytes | str, arch: str) -> KernelReport:
    """Entry points and instruction counts (dp4a, mma s8, shuffles, ...) of PTX text."""
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    kernels = re.findall(r"\.entry\s+(\w+)\s*\(", text)
    counts = {name: len(re.findall(pattern, text)) for name, pattern in PTX_PATTERNS.items()}
    return KernelReport(arch, "ptx", len(text.encode()), kernels, counts)


def report_cubin(cubin: bytes, arch: str) -> KernelReport:
    """Kernels of a cubin (ELF): its `.text.<kernel>` sections."""
    kernels = [name[len(".text."):] for name in elf_section_names(cubin)
               if name.startswith(".text.")]
    return KernelReport(arch, "cubin", len(cubin), kernels)


def elf_section_names(data: bytes) -> list[str]:
    """Section names of a 64-bit little-endian ELF file (a cubin)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not a 64-bit ELF file (expected a cubin)")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def section(i):  # (name offset, file offset, size)
        base = shoff + i * shentsize
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size
    _, str_offset, _ = section(shstrndx)
    names = []
    for i in range(shnum):
        name_offset = section(i)[0]
        end = data.index(b"\0", str_offset + name_offset)
        names.append(data[str_offset + name_offset:end].decode())
    return names


# ---- loadable artifacts without a GPU ---------------------------------------------------
@dataclass
class ArtifactInfo:
    """What `export_cuda_library` wrote."""

    path: Path
    arch: str
    size_bytes: int
    device_modules: list[str]  # kinds of the modules inside, e.g. ["llvm", "cuda"]
    kernel_format: str  # "fatbin" (SASS for arch + PTX)
    driver: str  # "real" or "stub"


def export_cuda(executable, target: tvm.target.Target, path: str | os.PathLike) -> str:
    """Write a loadable CUDA library for an executable from `build_cuda`; say what it holds.

    Kernels compiled in this process (a driver loaded) are written as they are; an executable
    holding CUDA source is rebuilt by `export_cuda_library` under the driver stub.
    """
    arch = check_cuda_arch(str(target.attrs["arch"]))
    if executable in _SOURCE_BUILDS:
        mod, target, strategy = _SOURCE_BUILDS[executable]
        info = export_cuda_library(mod, target, path, strategy)
    elif has_cuda_driver():
        executable.export_library(str(path))
        info = ArtifactInfo(Path(path), arch, Path(path).stat().st_size,
                            [m.kind for m in device_modules(executable, None)], "fatbin", "real")
    else:
        raise ValueError(
            "this executable holds CUDA source (no driver here) and was not built by "
            "build_cuda: export it with export_cuda_library(mod, target, path)"
        )
    return describe(info)


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
    strategy: GemmStrategy = GemmStrategy.DP4A,
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
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        driver = "real" if has_cuda_driver() else "stub"
        if driver == "stub":
            stub_dir = build_driver_stub(tmp / "stub")
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                p for p in (str(stub_dir), env.get("LD_LIBRARY_PATH", "")) if p
            )
        request = {"mod": str(tmp / "mod.json"), "arch": arch, "out": str(path),
                   "strategy": strategy.value}
        proc = subprocess.run(
            [sys.executable, "-m", "schedules.cuda.export_worker", json.dumps(request)],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout_s,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"CUDA export of {path.name} failed (driver: {driver}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    return ArtifactInfo(path, arch, path.stat().st_size, result["modules"], "fatbin", driver)


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
