"""The tensor intrinsics MetaSchedule's x86 rules name, made usable in a tuning process.

Two facts of TVM 0.27 (docs/tvm-notes.md):

- its `dot_16x4_vnni` (the intrinsic MetaSchedule's x86 VNNI rules tensorize with) is broken
  with the wheel's LLVM 22; schedules.cpu.vnni holds a fixed one with the same description,
  registered here under TVM's name (`register_fixed_vnni`), so tuned VNNI schedules compile;
- MetaSchedule imports `tvm.s_tir.tensor_intrin` in every TuneContext and in every builder
  worker, and that import builds every GPU tensor-core intrinsic: about 95 s of CPU here.
  `skip_intrinsic_library` puts an empty package in its place first (its submodules stay
  importable one by one), so a tuning process pays only for what the x86 rules use.
"""

from __future__ import annotations

import importlib.util
import sys
import types

from tvm.s_tir import TensorIntrin

from ..cpu import vnni

TVM_VNNI_INTRIN = "dot_16x4_vnni"  # tvm.s_tir.tensor_intrin.x86.VNNI_DOT_16x4_INTRIN
INTRIN_PACKAGE = "tvm.s_tir.tensor_intrin"


def register_fixed_vnni() -> str:
    """Register schedules.cpu.vnni's vpdpbusd under TVM's name `dot_16x4_vnni` (replacing
    TVM's broken one if it is there); returns the name."""
    desc, impl = vnni._INTRINSICS[vnni.VNNI_INTRIN]
    TensorIntrin.register(TVM_VNNI_INTRIN, desc, impl, override=True)
    return TVM_VNNI_INTRIN


def skip_intrinsic_library() -> None:
    """Stand an empty `tvm.s_tir.tensor_intrin` package in for TVM's (unless it is loaded
    already), then register the fixed VNNI intrinsic. For tuning processes and their builder
    workers only: a later `import tvm.s_tir.tensor_intrin.x86` would register TVM's broken
    intrinsic again and fail on the name taken."""
    if INTRIN_PACKAGE not in sys.modules:
        spec = importlib.util.find_spec(INTRIN_PACKAGE)
        package = types.ModuleType(INTRIN_PACKAGE, "empty stand-in (schedules.tuning)")
        package.__path__ = list(spec.submodule_search_locations or [])
        package.__spec__ = spec
        sys.modules[INTRIN_PACKAGE] = package
    register_fixed_vnni()


__all__ = ["TVM_VNNI_INTRIN", "register_fixed_vnni", "skip_intrinsic_library"]
