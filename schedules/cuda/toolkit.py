"""The CUDA toolkit: where it is, and nvcc compiling the generated kernels.

nvcc on PATH may be a wrapper script; NVRTC and nvcc look for headers relative to CUDA_PATH, so
the real toolkit folder is found and set for the duration of a compile. Kernels are compiled
without --use_fast_math: the float entry quantizer (x times the float32 reciprocal of its
scale, then round) must round exactly as PyTorch does, with no flushed or approximated steps.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import tvm

from ..targets import check_cuda_arch

NO_FAST_MATH = {"TVM_CUDA_NVCC_NO_FAST_MATH": "1"}


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


def find_cuda_tool(name: str) -> Path | None:
    """A CUDA binary tool (cuobjdump, nvdisasm): on PATH, in the toolkit, or the copy that
    Triton (a PyTorch dependency) ships in site-packages/triton/backends/nvidia/bin."""
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    candidates = []
    try:
        candidates.append(find_cuda_home() / "bin" / name)
    except FileNotFoundError:
        pass
    try:
        import triton

        candidates.append(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)
    except ImportError:
        pass
    return next((path for path in candidates if path.is_file()), None)


def compile_cubin_verbose(source: str, arch: str) -> tuple[bytes, str, str]:
    """nvcc -cubin -Xptxas -v for `arch`, in one run: (cubin, its PTX, ptxas's per-kernel
    resource report)."""
    import subprocess
    import tempfile

    check_cuda_arch(arch)
    home = find_cuda_home()
    with tempfile.TemporaryDirectory(prefix="ivit_nvcc_") as tmp, cuda_environment():
        cu, cubin = Path(tmp) / "kernels.cu", Path(tmp) / "kernels.cubin"
        cu.write_text(source)
        proc = subprocess.run(
            [str(home / "bin" / "nvcc"), "-cubin", "-O3", f"-arch={arch}", "-Xptxas", "-v",
             "--keep", "--keep-dir", tmp, "-o", str(cubin), str(cu)],
            capture_output=True, text=True, cwd=tmp,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc -cubin for {arch} failed:\n{proc.stderr[-8000:]}")
        ptx = next(Path(tmp).glob("*.ptx"), None)
        return cubin.read_bytes(), ptx.read_text() if ptx else "", proc.stderr
