"""Helpers shared by the rewriting passes."""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import ir, relax


def called_globals(mod: tvm.IRModule) -> set[str]:
    """Names of the GlobalVars that the module's Relax functions reference."""
    names = set()
    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            tvm_ffi.structural_walk(func, (ir.GlobalVar, lambda gv: names.add(gv.name_hint)))
    return names


def drop_orphans(before: tvm.IRModule, after: tvm.IRModule) -> tvm.IRModule:
    """after without the functions that `before` called and `after` no longer calls."""
    orphans = called_globals(before) - called_globals(after)
    for gv in list(after.get_global_vars()):
        if gv.name_hint in orphans:
            del after[gv]
    return after
