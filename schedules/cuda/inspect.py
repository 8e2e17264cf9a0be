"""What a CUDA build holds: its generated source, and the kernels and notable instructions of
PTX or cubin compiled from it (the tests read these to prove dp4a, no spills, every kernel),
the kernel launches of one inference (kernel_launches),
ptxas's per-kernel resources (registers, spills, shared memory) and, where cuobjdump and
nvdisasm are found (toolkit.find_cuda_tool), each kernel's SASS instruction mix."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field

import tvm
from tvm import relax, tirx

from .build import device_modules

HOST_FUNC = re.compile(r"shape_func\d*")  # the VM's shape computations: host code, no launch

PTX_PATTERNS = {
    "dp4a": r"\bdp4a\.s32\.s32\b",
    "mma_s8": r"\bmma\.sync\.aligned\.\S*\.s8\.s8\.s32\b",
    "mma_u8": r"\bmma\.sync\.aligned\.\S*\.u8\.s8\.s32\b",
    "ldmatrix": r"\bldmatrix\.sync\.aligned\.",
    "cp_async": r"\bcp\.async\.c[ag]\.shared\.global\b",
    "ld_shared": r"\bld\.shared\.",
    "ld_global": r"\bld\.global\.",
    "st_global_byte": r"\bst\.global\.[us]8\b",  # one int8 element
    "st_global_byte_pair": r"\bst\.global\.v2\.[us]8\b",  # two (char2)
    "shfl": r"\bshfl\.sync\.",
    "local_memory": r"\.local\s",
}


def kernel_launches(lowered: tvm.IRModule, function: str | None = None) -> dict[str, int]:
    """PrimFunc name -> calls per inference of a module lowered by pipeline.cuda_pipeline
    (before VM codegen), in every Relax function or only in `function`: each call launches
    one kernel; host shape functions are left out."""
    calls: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.GlobalVar):
            name = expr.op.name_hint
            if isinstance(lowered[expr.op], tirx.PrimFunc) and not HOST_FUNC.fullmatch(name):
                calls[name] = calls.get(name, 0) + 1

    for gv, func in lowered.functions_items():
        if isinstance(func, relax.Function) and function in (None, gv.name_hint):
            relax.analysis.post_order_visit(func, visit)
    return calls


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


def ptx_kernels(ptx: bytes | str) -> dict[str, str]:
    """Each entry point's PTX body by kernel name."""
    text = ptx.decode() if isinstance(ptx, bytes) else ptx
    bodies = re.split(r"(?=\.visible \.entry )", text)[1:]
    return {re.match(r"\.visible \.entry (\w+)", body).group(1): body for body in bodies}


def kernel_instructions(ptx: bytes | str) -> dict[str, dict[str, int]]:
    """PTX_PATTERNS counted per kernel."""
    return {name: {key: len(re.findall(pattern, body)) for key, pattern in PTX_PATTERNS.items()}
            for name, body in ptx_kernels(ptx).items()}


@dataclass(frozen=True)
class KernelResources:
    """ptxas's report for one kernel."""

    registers: int
    shared_bytes: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


def parse_ptxas_resources(log: str) -> dict[str, KernelResources]:
    """Per-kernel resources from `nvcc -Xptxas -v` output (toolkit.compile_cubin_verbose)."""
    found, current, stack = {}, None, (0, 0, 0)
    for line in log.splitlines():
        if match := re.search(r"Compiling entry function '(\w+)'", line):
            current = match.group(1)
        elif (match := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                                 r"(\d+) bytes spill loads", line)):
            stack = tuple(int(x) for x in match.groups())
        elif current and (match := re.search(r"Used (\d+) registers", line)):
            smem = re.search(r"(\d+) bytes smem", line)
            found[current] = KernelResources(int(match.group(1)),
                                             int(smem.group(1)) if smem else 0, *stack)
            current, stack = None, (0, 0, 0)
    return found


# "/*0120*/   @!P0 IMMA.16832.S8.S8 R8, ..." -> the opcode after the address and predicate.
SASS_LINE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
SASS_OPCODES = ("IMMA", "HMMA", "LDSM", "LDGSTS", "IDP.4A", "IDP.2A", "SHFL", "LDL", "STL")


def sass_opcodes(cubin: bytes) -> dict[str, dict[str, int]]:
    """Per-kernel counts of every SASS opcode (with its modifiers, e.g. "IMMA.16832.S8.S8")
    from `cuobjdump -sass` (needs cuobjdump and nvdisasm; toolkit.find_cuda_tool)."""
    from pathlib import Path

    from .toolkit import find_cuda_tool

    cuobjdump, nvdisasm = find_cuda_tool("cuobjdump"), find_cuda_tool("nvdisasm")
    if cuobjdump is None or nvdisasm is None:
        raise FileNotFoundError("cuobjdump/nvdisasm not found: pip install "
                                "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    with tempfile.TemporaryDirectory(prefix="ivit_sass_") as tmp:
        path = Path(tmp) / "kernels.cubin"
        path.write_bytes(cubin)
        env = {**os.environ, "PATH": f"{nvdisasm.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        proc = subprocess.run([str(cuobjdump), "-sass", str(path)], capture_output=True,
                              text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"cuobjdump -sass failed: {proc.stderr[-2000:]}")
    counts: dict[str, dict[str, int]] = {}
    current = None
    for line in proc.stdout.splitlines():
        if match := re.search(r"Function : (\w+)", line):
            current = counts.setdefault(match.group(1), {})
        elif current is not None and (match := SASS_LINE.search(line)):
            current[match.group(1)] = current.get(match.group(1), 0) + 1
    return counts


def sass_instructions(cubin: bytes) -> dict[str, dict[str, int]]:
    """Per-kernel counts of SASS_OPCODES (an opcode with any modifiers counts for its name)."""
    return {kernel: {name: sum(n for opcode, n in opcodes.items()
                               if opcode == name or opcode.startswith(name + "."))
                     for name in SASS_OPCODES}
            for kernel, opcodes in sass_opcodes(cubin).items()}
