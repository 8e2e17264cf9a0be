"""Small rewrites of scheduled (block-form) TIR that schedule primitives cannot express.

TVM 0.27's Python API has no statement mutator (no `stmt_functor`), so `map_stmt` rebuilds
the node kinds a scheduled PrimFunc holds before lowering (blocks, loops, sequences, stores),
bottom-up, and `substitute` replaces variables in the index arithmetic the schedules emit.
Used by cuda/mma.py (clamped padding rows), cuda/twin.py (thread loops -> serial loops),
cuda/rowwise.py and cpu/lookup.py (a byte-table lookup as vpermi2b).
"""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import s_tir, tirx

LOAD = tvm.ir.TensorLoad  # what tirx.BufferLoad(...) builds (tirx.BufferLoad is a function)
_BINARY = (tirx.Add, tirx.Sub, tirx.Mul, tirx.FloorDiv, tirx.FloorMod, tirx.Min, tirx.Max,
           tirx.LT, tirx.LE, tirx.GT, tirx.GE, tirx.EQ, tirx.NE, tirx.And, tirx.Or)


def substitute(expr, vmap: dict):
    """`expr` with each variable in `vmap` replaced (index arithmetic, casts and loads)."""
    if isinstance(expr, tirx.Var):
        return vmap.get(expr, expr)
    if isinstance(expr, tirx.IntImm | tirx.FloatImm):
        return expr
    if isinstance(expr, _BINARY):
        return type(expr)(substitute(expr.a, vmap), substitute(expr.b, vmap))
    if isinstance(expr, tirx.Cast):
        return tirx.Cast(expr.dtype, substitute(expr.value, vmap))
    if isinstance(expr, LOAD):
        return tirx.BufferLoad(expr.source, [substitute(i, vmap) for i in expr.indices])
    if isinstance(expr, tirx.Ramp):
        return tirx.Ramp(substitute(expr.base, vmap), substitute(expr.stride, vmap), expr.lanes)
    raise TypeError(f"substitute: unsupported expression {type(expr).__name__}: {expr}")


def substitute_region(region: tirx.BufferRegion, vmap: dict) -> tirx.BufferRegion:
    ranges = [tvm.ir.Range.from_min_extent(substitute(r.min, vmap), r.extent)
              for r in region.region]
    return tirx.BufferRegion(region.source, ranges)


def map_stmt(stmt, post: Callable):
    """Rebuild `stmt` bottom-up; `post(node)` returns the node's replacement (or the node)."""
    if stmt is None:
        return None
    if isinstance(stmt, s_tir.SBlockRealize):
        block = map_stmt(stmt.block, post)
        node = s_tir.SBlockRealize(list(stmt.iter_values), stmt.predicate, block)
    elif isinstance(stmt, s_tir.SBlock):
        node = s_tir.SBlock(list(stmt.iter_vars), list(stmt.reads), list(stmt.writes),
                            stmt.name_hint, map_stmt(stmt.body, post), map_stmt(stmt.init, post),
                            list(stmt.alloc_buffers), list(stmt.match_buffers),
                            dict(stmt.annotations))
    elif isinstance(stmt, tirx.For):
        node = tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind,
                        map_stmt(stmt.body, post), stmt.thread_binding, dict(stmt.annotations))
    elif isinstance(stmt, tirx.SeqStmt):
        node = tirx.SeqStmt([map_stmt(s, post) for s in stmt.seq])
    elif isinstance(stmt, tirx.IfThenElse):
        node = tirx.IfThenElse(stmt.condition, map_stmt(stmt.then_case, post),
                               map_stmt(stmt.else_case, post))
    elif isinstance(stmt, tirx.AttrStmt):
        node = tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, map_stmt(stmt.body, post))
    elif isinstance(stmt, tirx.BufferStore | tirx.Evaluate):
        node = stmt
    else:
        raise TypeError(f"map_stmt: unsupported statement {type(stmt).__name__}")
    return post(node)


def map_func(func: tirx.PrimFunc, post: Callable) -> tirx.PrimFunc:
    """`func` with its body rebuilt by map_stmt."""
    return func.with_body(map_stmt(func.body, post))
