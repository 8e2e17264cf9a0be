"""What the two TVM engines share: the llvm target and loading an exported Relax VM library.

Loading needs only the TVM runtime (`tvm.runtime`), never `tvm.relax`, so the measuring
process runs with TVM_USE_RUNTIME_LIB=1 and never loads the compiler library.
"""

from __future__ import annotations

from pathlib import Path

# The measuring process loads only libtvm_runtime, as a deployment would (docs/tvm-notes.md).
RUNTIME_ONLY = {"TVM_USE_RUNTIME_LIB": "1"}


def llvm_target(mcpu: str):
    """The llvm target (with its capabilities) both TVM engines compile for."""
    from ivit_tvm.schedules.backend import make_target

    return make_target("llvm", mcpu=mcpu)


def load_vm(library: str | Path):
    """A Relax VirtualMachine on the CPU over an exported library."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    return VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu(0))
