"""Compilation targets: `make_target("cuda", "sm_90")`, `make_target("llvm", "cascadelake")`.

TVM 0.27 takes targets as JSON dicts only (option strings such as "llvm -mcpu=x" are refused,
and a bare "cuda" means sm_50), so the project builds them here.
"""

from __future__ import annotations

import os
import re

import tvm

CUDA_ARCH = re.compile(r"sm_(\d{2,3})([af]?)")
CUDA_ARCH_FORMS = '"sm_XY" with compute capability X.Y, e.g. "sm_80", "sm_86", "sm_90", "sm_90a"'
MIN_CUDA_ARCH = 61  # dp4a needs sm_61+


def host_cores() -> int:
    """CPU cores this process may use (the llvm target's "num-cores", for MetaSchedule)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_cuda_arch(arch: str) -> str:
    """Return `arch` if it names a CUDA architecture the kernels support; else ValueError."""
    match = CUDA_ARCH.fullmatch(arch) if isinstance(arch, str) else None
    if match is None:
        raise ValueError(f"CUDA arch {arch!r} not understood: expected {CUDA_ARCH_FORMS}")
    if int(match.group(1)) < MIN_CUDA_ARCH:
        raise ValueError(
            f"CUDA arch {arch!r} is too old: the int8 kernels use dp4a, which needs sm_61 or "
            f"newer ({CUDA_ARCH_FORMS})"
        )
    return arch


def make_target(kind: str, arch: str | None = None) -> tvm.target.Target:
    """A TVM target for "llvm" (arch: an optional LLVM -mcpu) or "cuda" (arch: "sm_XY").

    cuda: the host side is plain x86-64 llvm, so artifacts run on any x86-64 host. With arch
    None the arch of the local GPU is used, and its absence is an error (no silent default).
    llvm: "num-cores" is this host's core count; without an mcpu, this host's CPU (so the VNNI
    kernels are used where the CPU has them; pass e.g. "x86-64" for a portable build).
    """
    if kind == "llvm":
        mcpu = host_cpu() if arch is None else check_llvm_cpu(arch)
        return tvm.target.Target({"kind": "llvm", "num-cores": host_cores(), "mcpu": mcpu})
    if kind == "cuda":
        if arch is None:
            arch = local_cuda_arch()
        return tvm.target.Target(
            {"kind": "cuda", "arch": check_cuda_arch(arch), "host": {"kind": "llvm"}}
        )
    raise ValueError(f'target kind {kind!r} not supported: expected "llvm" or "cuda"')


def host_cpu() -> str:
    """The LLVM name of this machine's CPU (e.g. "cascadelake", "znver5")."""
    from tvm.target.codegen import llvm_get_system_cpu

    return llvm_get_system_cpu()


def check_llvm_cpu(mcpu: str) -> str:
    """Return `mcpu` if LLVM knows it; else ValueError naming how to list the valid ones."""
    from tvm.target.codegen import llvm_is_valid_cpu

    triple = tvm.target.Target({"kind": "llvm"}).attrs.get("mtriple")
    if not llvm_is_valid_cpu(mcpu, triple):
        raise ValueError(f"LLVM does not know the CPU {mcpu!r}: use an LLVM -mcpu name such as "
                         f"x86-64, haswell, cascadelake, znver4 (this host: {host_cpu()})")
    return mcpu


def local_cuda_arch() -> str:
    """The arch of CUDA device 0, or ValueError when there is none."""
    device = tvm.cuda(0)
    if not device.exist:
        raise ValueError(
            f"no CUDA device here to take the arch from: pass one ({CUDA_ARCH_FORMS})"
        )
    return "sm_" + device.compute_version.replace(".", "")
