"""What the two TVM engines share: the llvm target and loading an exported Relax VM library.

Loading needs only the TVM runtime (`tvm.runtime`), never `tvm.relax`, so the measuring
process runs with TVM_USE_RUNTIME_LIB=1 and never loads the compiler library.
"""

from __future__ import annotations

from pathlib import Path

# The measuring process loads only libtvm_runtime, as a deployment would (tvm-0.27 notes).
RUNTIME_ONLY = {"TVM_USE_RUNTIME_LIB": "1"}


def host_mcpu() -> str:
    """LLVM's name for this machine's CPU (e.g. "znver5"), which enables its vector features."""
    from tvm.target import codegen

    return codegen.llvm_get_system_cpu()


def llvm_target(mcpu: str):
    """The llvm target both TVM engines compile for (the project's make_target rules)."""
    from schedules.targets import make_target

    return make_target("llvm", mcpu)


def load_vm(library: str | Path):
    """A Relax VirtualMachine on the CPU over an exported library."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    return VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu(0))
