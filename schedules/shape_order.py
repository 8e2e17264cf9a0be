"""Shape functions in a fixed order, for byte-reproducible libraries.

VMShapeLower writes a dynamic-shape function's stores to the shape heap in hash-map order
(object addresses), so two compiles of one checkpoint give shape_func bodies with the same
stores in another order, and model.so files that differ in a few instructions. Sorting
stores that do not depend on each other by their heap slot fixes the order; the result is
the same (each store reads only slots that no store of the sequence writes).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.ir.expr import TensorLoad  # what tirx.BufferLoad(...) builds in this TVM

SHAPE_FUNC = "shape_func"  # VMShapeLower's name prefix for the functions it adds


def _slot(indices) -> int | None:
    """The constant slot of a one-dimensional access, else None."""
    if len(indices) == 1 and isinstance(indices[0], tirx.IntImm):
        return int(indices[0].value)
    return None


def _reads(expr, slots: set[int]) -> bool:
    """Add the heap slots `expr` reads to `slots`; False where it holds anything else than
    constants, variables, casts, binary arithmetic and constant-slot loads."""
    if isinstance(expr, tirx.IntImm | tirx.Var):
        return True
    if isinstance(expr, TensorLoad):
        slot = _slot(expr.indices)
        slots.add(slot)
        return slot is not None
    if isinstance(expr, tirx.Cast):
        return _reads(expr.value, slots)
    if hasattr(expr, "a") and hasattr(expr, "b"):
        return _reads(expr.a, slots) and _reads(expr.b, slots)
    return False


def sorted_stores(body: tirx.Stmt) -> tirx.Stmt | None:
    """`body` with its independent constant-slot stores sorted by slot; None where it is not
    such a sequence (left as it is)."""
    if not isinstance(body, tirx.SeqStmt):
        return None
    stores = list(body.seq)
    if not all(isinstance(s, tirx.BufferStore) and _slot(s.indices) is not None for s in stores):
        return None
    written = [_slot(s.indices) for s in stores]
    read: set[int] = set()
    if len(set(written)) < len(written) or not all(_reads(s.value, read) for s in stores):
        return None
    if read & set(written):
        return None
    return tirx.SeqStmt(sorted(stores, key=lambda s: _slot(s.indices)))


@tvm.transform.module_pass(opt_level=0, name="SortShapeStores")
def sort_shape_stores(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Run after VMShapeLower: every shape function's stores in slot order."""
    for gv, func in list(mod.functions.items()):
        if gv.name_hint.startswith(SHAPE_FUNC) and isinstance(func, tirx.PrimFunc):
            body = sorted_stores(func.body)
            if body is not None:
                mod[gv] = func.with_body(body)
    return mod
