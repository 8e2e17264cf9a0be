"""Read-only questions about TIR PrimFuncs, shared by the passes and the schedules.

Which blocks a function holds, where a buffer is loaded, whether a loop is bound to a GPU
thread: one definition each, here at the bottom layer, instead of a walker per caller.
"""

from __future__ import annotations

import tvm_ffi
from tvm import tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir.stmt import SBlock


def blocks(stmt) -> list[SBlock]:
    """Every block inside a statement (or PrimFunc), in walk order."""
    found: list[SBlock] = []
    tvm_ffi.structural_walk(stmt, (SBlock, found.append))
    return found


def block_names(stmt) -> list[str]:
    """The names of every block inside a statement (or PrimFunc), in walk order."""
    return [block.name_hint for block in blocks(stmt)]


def tensor_loads(stmt) -> list[TensorLoad]:
    """Every load inside a statement or expression, in walk order."""
    found: list[TensorLoad] = []
    tvm_ffi.structural_walk(stmt, (TensorLoad, found.append))
    return found


def load_indices(stmt, buffer) -> list:
    """The index tuples of every load of `buffer` in a statement."""
    return [load.indices for load in tensor_loads(stmt) if load.source.same_as(buffer)]


def count_loads(stmt, buffer) -> int:
    """How many loads of `buffer` a statement holds."""
    return len(load_indices(stmt, buffer))


def uses_var(expr, var) -> bool:
    """Whether an expression (or statement) refers to the variable `var`."""
    found: list = []
    tvm_ffi.structural_walk(expr, (tirx.Var, found.append))
    return any(v.same_as(var) for v in found)


def seq_stmts(stmt) -> list:
    """The statements of a SeqStmt, or [stmt] for any other statement."""
    return list(stmt.seq) if isinstance(stmt, tirx.SeqStmt) else [stmt]


def root_nests(func: tirx.PrimFunc) -> list:
    """The statements directly under a PrimFunc's root block (its top-level loop nests)."""
    return seq_stmts(func.body.block.body)


def find_block(func: tirx.PrimFunc, name: str) -> SBlock | None:
    """The block `name` when it occurs once, alone in a root-level loop nest of its own (as TE
    and FuseTIR build them), else None."""
    nests = [block_names(stmt) for stmt in root_nests(func)]
    if [names for names in nests if name in names] != [[name]]:
        return None
    return next(block for block in blocks(func.body) if block.name_hint == name)


def has_thread_binding(func: tirx.PrimFunc) -> bool:
    """True when a loop of `func` is bound to a GPU thread or block index."""
    found = False

    def visit_for(node: tirx.For) -> None:
        nonlocal found
        found = found or node.kind == tirx.ForKind.THREAD_BINDING

    def visit_attr(node: tirx.AttrStmt) -> None:
        nonlocal found
        found = found or node.attr_key == "thread_extent"

    tvm_ffi.structural_walk(
        func.body, [(tirx.For, visit_for), (tirx.AttrStmt, visit_attr)], order="post"
    )
    return found
