"""Backends as data: one `Backend` per target kind, looked up once by the compile driver.

    info = make_target("llvm", mcpu="cascadelake")     # target + capabilities, resolved once
    backend = get_backend(info.kind)
    built = backend.build(mod, info)                    # the one build of a compile
    sentence = backend.export(built, info, path)        # writes the library, says what it is

A backend holds its target rules (schedules.targets), its Relax pipeline, its ordered schedule
rules and its build and export; the driver never branches on the kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from .targets import (
    Capabilities,
    TargetInfo,
    cuda_capabilities,
    cuda_target,
    llvm_capabilities,
    llvm_target,
)


@dataclass(frozen=True)
class Backend:
    """Everything target-specific about compiling for one TVM target kind."""

    kind: str
    machine_option: str  # the make_target keyword naming the machine: "mcpu" or "arch"
    target_rules: Callable[[str | None], tvm.target.Target]  # machine name -> TVM target
    capabilities: Callable[[tvm.target.Target], Capabilities]
    pipeline: Callable[[TargetInfo], tvm.transform.Pass]  # the relax_pipeline of tvm.compile
    schedule_rules: Callable[[TargetInfo], list]  # ordered (docs/architecture.md: how each runs)
    build: Callable[[tvm.IRModule, TargetInfo], Any]
    export: Callable[[Any, TargetInfo, Path], str]  # writes the library; describes it

    def resolve(self, target: tvm.target.Target) -> TargetInfo:
        """`target` with its capabilities, resolved once for every later stage."""
        return TargetInfo(target, self.capabilities(target))

    def make_target(self, machine: str | None = None) -> TargetInfo:
        """The target for `machine` (an LLVM -mcpu or a CUDA "sm_XY"; None: this host's)."""
        return self.resolve(self.target_rules(machine))


# ---- llvm ---------------------------------------------------------------------------------------
def _cpu_pipeline(info: TargetInfo) -> tvm.transform.Pass:
    from .cpu.pipeline import cpu_pipeline

    return cpu_pipeline(info)


def _cpu_rules(info: TargetInfo) -> list:
    from .cpu.rules import CPU_RULES

    return list(CPU_RULES)


def _cpu_build(mod: tvm.IRModule, info: TargetInfo) -> tvm.runtime.Executable:
    return tvm.compile(mod, target=info.target, relax_pipeline=_cpu_pipeline(info))


def _cpu_export(executable: tvm.runtime.Executable, info: TargetInfo, path: Path) -> str:
    executable.export_library(str(path))
    return "native llvm library; runs with the TVM runtime on this CPU type"


# ---- cuda ---------------------------------------------------------------------------------------
def _cuda_pipeline(info: TargetInfo) -> tvm.transform.Pass:
    from .cuda.pipeline import cuda_pipeline

    return cuda_pipeline(info.target)


def _cuda_rules(info: TargetInfo) -> list:
    from .cuda.pipeline import schedule_rules

    return schedule_rules()


def _cuda_build(mod: tvm.IRModule, info: TargetInfo):
    from .cuda.export import build_library

    return build_library(mod, info)


def _cuda_export(built, info: TargetInfo, path: Path) -> str:
    from .cuda.export import write_library

    return write_library(built, info, path)


BACKENDS: dict[str, Backend] = {
    "llvm": Backend("llvm", "mcpu", llvm_target, llvm_capabilities, _cpu_pipeline, _cpu_rules,
                    _cpu_build, _cpu_export),
    "cuda": Backend("cuda", "arch", cuda_target, cuda_capabilities, _cuda_pipeline, _cuda_rules,
                    _cuda_build, _cuda_export),
}


def get_backend(kind: str) -> Backend:
    """The backend of a target kind; ValueError listing the kinds there are."""
    if kind not in BACKENDS:
        raise ValueError(
            f"target kind {kind!r} not supported: choose one of {', '.join(sorted(BACKENDS))}"
        )
    return BACKENDS[kind]


def make_target(kind: str, arch: str | None = None, mcpu: str | None = None) -> TargetInfo:
    """The target of `kind` with its capabilities: llvm takes `mcpu` (default: this host's
    CPU), cuda takes `arch` ("sm_XY"; default: the local GPU's); the other is ignored."""
    backend = get_backend(kind)
    return backend.make_target({"arch": arch, "mcpu": mcpu}[backend.machine_option])
