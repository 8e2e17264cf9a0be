"""What a CUDA build holds: its generated source, and the kernels and notable instructions of
PTX or cubin compiled from it (the tests read these to prove dp4a, no spills, every kernel)."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from .build import device_modules

PTX_PATTERNS = {
    "dp4a": r"\bdp4a\.s32\.s32\b",
    "mma_s8": r"\bmma\.sync\.aligned\.\S*\.s8\.s8\.s32\b",
    "ld_shared": r"\bld\.shared\.",
    "shfl": r"\bshfl\.sync\.",
    "local_memory": r"\.local\s",
}


def cuda_source(executable) -> str:
    """The generated CUDA C of an executable built by `build_cuda`."""
    modules = device_modules(executable, "cuda")
    if not modules:
        raise ValueError("the executable holds no CUDA module: was it built for a cuda target?")
    return "\n".join(module.inspect_source() for module in modules)


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
