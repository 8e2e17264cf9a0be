"""Device code's index arithmetic as LowerWarpMemory leaves it, made cheap: divisions with
one constant value folded (the mma fragments then live in registers), shuffles from a lane to
itself removed, and row guards `row // tokens < batch` compared without dividing
(simplify_device_indexing); then, after TVM's simplifier, two adjacent int8/int16 stores as
one vector store (pair_adjacent_stores).

LowerWarpMemory turns an index `i` into a warp buffer of W lanes x E elements per lane into
the lane's local index `(i / (W * E)) * E + i % E`. For an mma accumulator tile at
`tile * 256 + lane * 8 + e` that is `((lane * 8 + tile * 256 + e) / 256) * 8 + e`: always
`tile * 8 + e` for lane < 32, but TVM's simplifier proves `x / c == k` only for k == 0, so
every tile after the first keeps a lane-dependent index. nvcc cannot know lane < 32 either
(threadIdx.x < blockDim.x), so the (64,) int32 accumulator is indexed at run time and lives
in local memory: 256 bytes of stack, an st.local/ld.local per mma operand and epilogue load.

The analyzer does know the bound: `const_int_bound` of such a quotient is [k, k] once the
thread extents, constant loop ranges and let-bound values (CommonSubexprElim's) are bound. A
division or modulo whose bound is one value is replaced by that value; exact, since the bound
is sound.

A warp buffer read by the lane that holds the element (the GEMM epilogue reading its own
accumulators) is lowered to `tvm_warp_shuffle(mask, value, threadIdx.x, 32, 32)`: a SHFL that
returns the caller's own value. Where threadIdx.x spans whole warps and the source lane is
provably the caller's lane, the shuffle is replaced by the value.

With a symbolic batch, a GEMM's epilogue skips the padded rows of its last tile by
`(row // tokens) < batch` per store: an int64 division by a constant, 64 of them per thread in
a DeiT-S GEMM. For a divisor c > 0, `x // c < n` is `x < n * c` (floor division: x // c <= n - 1
exactly when x < n * c; truncated division too where x >= 0 is proved), one multiply that
CommonSubexprElim and nvcc hoist. Only where n * c cannot overflow: a constant n whose
product fits, or an int64 shape expression (the batch; an int32 one could overflow).

Runs in the device finalization of the "ivit_cuda" TIR pipeline (build.py).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.ir.prim.expr import IntImm

from ivit_tvm.ops.tir_query import count_loads, seq_stmts

DIVISIONS = (tirx.Div, tirx.FloorDiv, tirx.Mod, tirx.FloorMod)
WARP_SHUFFLE = tvm.ir.Op.get("tirx.tvm_warp_shuffle")
WARP_SIZE = 32


def _bounded_analyzer(func: tirx.PrimFunc) -> tuple[tvm.sym.Analyzer, tirx.Var | None, dict]:
    """An analyzer knowing every thread extent, constant loop range and let value of `func`
    (a variable bound in more than one place is left unknown), threadIdx.x where its extent
    is a whole number of warps (None otherwise), and the let values by variable."""
    ranges: dict = {}
    lane_vars: list = []
    values: dict = {}

    def visit_attr(node: tirx.AttrStmt) -> None:
        if node.attr_key == "thread_extent" and isinstance(node.value, IntImm):
            ranges.setdefault(node.node.var, []).append((0, node.value))
            if node.node.thread_tag == "threadIdx.x":
                lane_vars.append((node.node.var, int(node.value)))

    def visit_for(node: tirx.For) -> None:
        if isinstance(node.min, IntImm) and isinstance(node.extent, IntImm):
            ranges.setdefault(node.loop_var, []).append((int(node.min), node.extent))

    def visit_bind(node: tirx.Bind) -> None:
        values.setdefault(node.var, []).append(node.value)

    tvm_ffi.structural_walk(
        func.body,
        [(tirx.AttrStmt, visit_attr), (tirx.For, visit_for), (tirx.Bind, visit_bind)],
        order="post",
    )
    analyzer = tvm.sym.Analyzer()
    for var, found in ranges.items():  # ranges first: let values are bounded through them
        if len(found) == 1:
            low, extent = found[0]
            analyzer.bind(var, tvm.ir.Range.from_min_extent(IntImm(str(extent.ty), low), extent))
    lets = {var: found[0] for var, found in values.items() if len(found) == 1}
    for var, value in lets.items():  # in program order: a value may use an earlier let
        analyzer.bind(var, value)
    whole_warps = len({var for var, _ in lane_vars}) == 1 and all(
        extent % WARP_SIZE == 0 for _, extent in lane_vars)
    return analyzer, (lane_vars[0][0] if whole_warps else None), lets


def simplify_device_indexing(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with every division and modulo whose value is one constant replaced by it,
    every warp shuffle from the caller's own lane replaced by its value, and every
    `x // c < n` (c > 0) compared as `x < n * c`."""
    analyzer, thread_x, lets = _bounded_analyzer(func)

    def division(node, mutator):
        node = mutator.default_mutate(node)
        bound = analyzer.const_int_bound(node)
        if bound.min_value == bound.max_value:
            return IntImm(str(node.ty), bound.min_value)
        return node

    def shuffle(node, mutator):
        node = mutator.default_mutate(node)
        if thread_x is None or not node.op.same_as(WARP_SHUFFLE):
            return node
        _mask, value, lane, width, warp = node.args
        own_lane = tirx.floormod(thread_x, IntImm(str(thread_x.ty), WARP_SIZE))
        if (all(isinstance(x, IntImm) and int(x) == WARP_SIZE for x in (width, warp))
                and analyzer.can_prove_equal(  # the source lane is taken modulo the width
                    tirx.floormod(lane, IntImm(str(lane.ty), WARP_SIZE)),
                    tirx.Cast(str(lane.ty), own_lane))):
            return value
        return node

    def row_guard(node, mutator):
        node = mutator.default_mutate(node)
        quotient, limit = node.a, node.b
        if isinstance(quotient, tirx.Var):  # CommonSubexprElim's let of the quotient
            quotient = lets.get(quotient, quotient)
        if not (isinstance(quotient, (tirx.FloorDiv, tirx.Div))
                and isinstance(quotient.b, IntImm) and int(quotient.b) > 0):
            return node
        x, divisor = quotient.a, quotient.b
        if isinstance(quotient, tirx.Div) and not analyzer.can_prove(x >= 0):
            return node  # truncated division rounds up below zero: not this identity
        if not _product_fits(limit, int(divisor)):
            return node
        return tirx.LT(x, limit * divisor)

    body = tvm_ffi.structural_mutate(
        func.body, [(kind, division) for kind in DIVISIONS]
        + [(tvm.ir.Call, shuffle), (tirx.LT, row_guard)])
    return func.with_body(body)


PAIRED_DTYPES = ("int8", "uint8", "int16")  # two of them: one 2- or 4-byte store


def pair_adjacent_stores(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`func` with each two consecutive statements that store one int8/int16 element each to
    `buf[i]` and `buf[i + 1]` (i provably even), under the same condition or none, merged
    into one vector store `buf[i:i + 2] = (v1, v2)`: the GEMM epilogue's column pair, one
    char2/short2 store instead of two byte/short stores. The values must not read `buf`;
    their let bindings move ahead of the merged store (each binding is local to its branch)."""
    analyzer, _, _ = _bounded_analyzer(func)

    def merge(node, mutator):
        node = mutator.default_mutate(node)
        stmts, merged, changed = list(node.seq), [], False
        index = 0
        while index < len(stmts):
            pair = _store_pair(stmts[index], stmts[index + 1], analyzer) \
                if index + 1 < len(stmts) else None
            if pair is None:
                merged.append(stmts[index])
                index += 1
                continue
            merged.append(pair)
            changed = True
            index += 2
        if not changed:
            return node
        return merged[0] if len(merged) == 1 else tirx.SeqStmt(merged)

    return func.with_body(tvm_ffi.structural_mutate(func.body, [(tirx.SeqStmt, merge)]))


def _guarded_store(stmt):
    """(condition or None, let bindings, store) of `[if c:] [binds...] buf[i] = v`, else None."""
    condition = None
    if isinstance(stmt, tirx.IfThenElse):
        if stmt.else_case is not None:
            return None
        condition, stmt = stmt.condition, stmt.then_case
    *binds, store = seq_stmts(stmt)
    if not (isinstance(store, tirx.BufferStore) and all(isinstance(b, tirx.Bind) for b in binds)
            and len(store.indices) == 1 and str(store.value.ty) in PAIRED_DTYPES):
        return None
    return condition, binds, store


def _store_pair(first, second, analyzer):
    """The merged statement of two guarded stores to buf[i], buf[i + 1], else None."""
    parts = _guarded_store(first), _guarded_store(second)
    if None in parts:
        return None
    (cond1, binds1, store1), (cond2, binds2, store2) = parts
    if (cond1 is None) != (cond2 is None) or (
            cond1 is not None and not tvm_ffi.structural_equal(cond1, cond2)):
        return None
    if not store1.buffer.same_as(store2.buffer):
        return None
    i1, i2 = store1.indices[0], store2.indices[0]
    parity = analyzer.modular_set(i1)
    if not (analyzer.can_prove_equal(i2 - i1, 1) and parity.coeff % 2 == 0
            and parity.base % 2 == 0):
        return None
    if count_loads(store1.value, store1.buffer) or count_loads(store2.value, store1.buffer):
        return None
    vector = tirx.Shuffle([store1.value, store2.value],
                          [IntImm("int32", 0), IntImm("int32", 1)])
    store = tirx.BufferStore(store1.buffer, vector, [tirx.Ramp(i1, IntImm(str(i1.ty), 1), 2)])
    body = tirx.SeqStmt([*binds1, *binds2, store]) if binds1 or binds2 else store
    return body if cond1 is None else tirx.IfThenElse(cond1, body, None)


def _product_fits(limit, divisor: int) -> bool:
    """limit * divisor cannot overflow: a constant whose product fits its dtype, or an int64
    shape expression (a batch: the product counts rows of a tensor in memory)."""
    dtype = str(limit.ty)
    if isinstance(limit, IntImm):
        return abs(int(limit) * divisor) <= int(tirx.max_value(dtype))
    return dtype == "int64"


simplify_device_indexing_pass = tirx.transform.prim_func_pass(
    lambda func, _mod, _ctx: simplify_device_indexing(func), opt_level=0,
    name="SimplifyDeviceIndexing")
pair_adjacent_stores_pass = tirx.transform.prim_func_pass(
    lambda func, _mod, _ctx: pair_adjacent_stores(func), opt_level=0,
    name="PairAdjacentStores")
