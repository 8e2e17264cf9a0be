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
import tvm_ffi
from tvm import s_tir, tirx

from ivit_tvm.ops.tir_query import blocks

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


def drop_index_wraps(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with `x % n` -> x and `x // n` -> 0 where x simplifies to a block iterator of
    domain [0, n) for a symbolic n (within an if_then_else's true branch, given its
    condition): reshape's unravel of the (symbolic) batch axis, which the simplifier leaves as
    a division per element once a reshape is inlined into a consumer."""
    analyzer = tvm.sym.Analyzer()
    domains = {}
    for block in blocks(func):
        for iv in block.iter_vars:
            analyzer.bind(iv.var, iv.dom)
            domains[iv.var] = iv.dom

    def same_width(node, mutator):
        """node with its operands mutated; TVM builds some index arithmetic of mixed widths
        (int32 iterators in int64 indices), which the simplifier cannot reason about: both
        operands go to int64 there."""
        a, b = mutator.mutate(node.a), mutator.mutate(node.b)
        if a.ty.dtype != b.ty.dtype:
            a, b = tirx.Cast("int64", a), tirx.Cast("int64", b)
        elif a.same_as(node.a) and b.same_as(node.b):
            return node
        return type(node)(a, b)

    def unwrap(node, mutator):
        node = same_width(node, mutator)
        a, b = node.a, node.b
        if not isinstance(b, tirx.IntImm):
            x = analyzer.simplify(a)
            dom = domains.get(x) if isinstance(x, tirx.Var) else None
            if dom is not None and analyzer.can_prove_equal(dom.min, 0) and \
                    analyzer.can_prove_equal(dom.extent, b):
                dtype = node.ty.dtype
                if isinstance(node, tirx.FloorDiv):
                    return tirx.IntImm(dtype, 0)
                return x if x.ty.dtype == dtype else tirx.Cast(dtype, x)
        return node

    def guarded(node, mutator):  # if_then_else(c, a, b): c holds while a is computed
        if not (isinstance(node.op, tvm.ir.Op) and node.op.name == "prim.if_then_else"):
            return mutator.default_mutate(node)
        cond, then, other = (mutator.mutate(arg) for arg in node.args[:1]), *node.args[1:]
        cond = next(cond)
        with analyzer.constraint_scope(cond):
            then = mutator.mutate(then)
        return tirx.if_then_else(cond, then, mutator.mutate(other))

    return tvm_ffi.structural_mutate(func, [
        (tirx.FloorMod, unwrap), (tirx.FloorDiv, unwrap), (tvm.ir.Call, guarded),
        *((kind, same_width) for kind in (tirx.Add, tirx.Sub, tirx.Mul, tirx.Min, tirx.Max)),
    ])
