"""Target rules and capabilities: `llvm_target("cascadelake")`, `cuda_target("sm_90")`, and
what the schedules may use on them (`Capabilities`), resolved once per target.

TVM 0.27 takes targets as JSON dicts only (option strings such as "llvm -mcpu=x" are refused,
and a bare "cuda" means sm_50), so the project builds them here. schedules.backend pairs
these rules with each kind's pipeline, build and export.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import tvm
from tvm.target import codegen

CUDA_ARCH = re.compile(r"sm_(\d{2,3})([af]?)")
CUDA_ARCH_FORMS = '"sm_XY" with compute capability X.Y, e.g. "sm_80", "sm_86", "sm_90", "sm_90a"'
MIN_CUDA_ARCH = 61  # dp4a needs sm_61+
MIN_TENSOR_CORE_ARCH = 80  # int8 mma.sync m16n8k32 and cp.async (schedules/cuda/mma.py)
VNNI_FEATURE = "avx512vnni"  # vpdpbusd/vpdpwssd on 512-bit vectors
VECTOR_FEATURES = (("avx512bw", 64), ("avx2", 32))  # widest integer vector, in bytes; else 16
# The integer dot-product ISA the CPU GEMMs use (schedules.cpu.isa), best first: the first
# whose LLVM features the target has. "avx512vnni": vpdpbusd/vpdpwssd on zmm; "avxvnni": the
# VEX-encoded ones on ymm (Alder Lake and later without AVX-512); "avx2": vpmaddwd on operands
# widened to int16; "generic": vectorized loops.
ISA_FEATURES = (
    ("avx512vnni", ("avx512vnni", "avx512bw")),
    ("avxvnni", ("avxvnni", "avx2")),
    ("avx2", ("avx2",)),
)
GENERIC_ISA = "generic"


@dataclass(frozen=True)
class Capabilities:
    """What a target offers the schedules, resolved once (`llvm_capabilities`,
    `cuda_capabilities`) and handed to every stage that asks."""

    vnni: bool = False  # llvm: AVX512-VNNI (the int8 GEMMs use vpdpbusd/vpdpwssd)
    vector_bytes: int = 16  # llvm: widest integer vector register (64 AVX-512, 32 AVX2)
    isa: str = GENERIC_ISA  # llvm: the GEMMs' dot-product ISA (ISA_FEATURES), e.g. "avx2"
    # llvm: AVX-512DQ's native 64-bit vector multiply. There Shiftmax/ShiftGELU run faster in
    # their int64 formulation (8 lanes, no widening around the int64 requantize) than in int32;
    # without it (AVX2, CUDA) the int32 one wins 2-2.4x (ops/integer.py, `narrow_exp`).
    int64_vectors: bool = False
    byte_permute: bool = False  # llvm: AVX512-VBMI's vpermi2b (ShiftGELU's table lookup)
    word_permute: bool = False  # llvm: AVX512-BW's vpermi2w (Shiftmax's exponential table)
    cuda_arch: str | None = None  # cuda: "sm_XY"
    # cuda sm_80+: int8 tensor cores (mma.sync .s8/.u8); int16 x int8 matmuls are lowered as
    # two 8-bit GEMMs there (frontend byte_products), elsewhere as one int16 x int8 loop
    int8_tensor_cores: bool = False
    cuda_driver: bool = False  # cuda: a driver (libcuda.so.1) is loaded here: nvcc in process


@dataclass(frozen=True)
class TargetInfo:
    """A TVM target with its resolved capabilities; `kind` names its schedules.backend."""

    target: tvm.target.Target
    caps: Capabilities

    @property
    def kind(self) -> str:
        return self.target.kind.name


def host_cores() -> int:
    """CPU cores this process may use (the llvm target's "num-cores", for MetaSchedule)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def sm_number(arch: str) -> int:
    """80 for "sm_80", 90 for "sm_90a"; 0 for anything that is not a CUDA arch."""
    match = CUDA_ARCH.fullmatch(arch)
    return int(match.group(1)) if match else 0


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


def llvm_target(mcpu: str | None = None) -> tvm.target.Target:
    """A TVM llvm target: "num-cores" is this host's core count; without an mcpu, this host's
    CPU (so the VNNI kernels are used where the CPU has them; pass e.g. "x86-64" for a portable
    build)."""
    mcpu = host_cpu() if mcpu is None else check_llvm_cpu(mcpu)
    return tvm.target.Target({"kind": "llvm", "num-cores": host_cores(), "mcpu": mcpu})


def cuda_target(arch: str | None = None) -> tvm.target.Target:
    """A TVM cuda target for `arch` ("sm_XY"). The host side is plain x86-64 llvm, so artifacts
    run on any x86-64 host. With arch None the arch of the local GPU is used, and its absence
    is an error (no silent default)."""
    if arch is None:
        arch = local_cuda_arch()
    return tvm.target.Target(
        {"kind": "cuda", "arch": check_cuda_arch(arch), "host": {"kind": "llvm"}}
    )


def host_cpu() -> str:
    """The LLVM name of this machine's CPU (e.g. "cascadelake", "znver5")."""
    return codegen.llvm_get_system_cpu()


def check_llvm_cpu(mcpu: str) -> str:
    """Return `mcpu` if LLVM knows it; else ValueError naming how to list the valid ones."""
    triple = tvm.target.Target({"kind": "llvm"}).attrs.get("mtriple")
    if not codegen.llvm_is_valid_cpu(mcpu, triple):
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


def llvm_capabilities(target: tvm.target.Target) -> Capabilities:
    """VNNI, the vector width, the GEMMs' ISA and 64-bit vector multiplies of an llvm target's
    mcpu/mattr."""

    def has(feature: str) -> bool:
        return bool(codegen.target_has_features(feature, target))

    vnni = has(VNNI_FEATURE)
    width = next((w for f, w in VECTOR_FEATURES if has(f)), 16)
    isa = next((name for name, needs in ISA_FEATURES if all(map(has, needs))), GENERIC_ISA)
    return Capabilities(vnni=vnni, vector_bytes=width, isa=isa,
                        int64_vectors=has("avx512dq"), byte_permute=has("avx512vbmi"),
                        word_permute=has("avx512bw"))


def cuda_capabilities(target: tvm.target.Target) -> Capabilities:
    """The arch of a cuda target, and whether this process has a CUDA driver to build with."""
    arch = check_cuda_arch(str(target.attrs["arch"]))
    return Capabilities(cuda_arch=arch, cuda_driver=cuda_driver_loaded(),
                        int8_tensor_cores=sm_number(arch) >= MIN_TENSOR_CORE_ARCH)


def cuda_driver_loaded() -> bool:
    """Whether this process loaded TVM's CUDA runtime (it needs libcuda.so.1, real or stub)."""
    return "tvm_runtime_cuda" in tvm.base._LOADED_LIBS
