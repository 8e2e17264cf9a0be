"""PackWeights: store the constant int8 dense weights in the layout of the target's GEMM.

A dense weight is a constant (N, K) int8 argument of a call_tir whose PrimFunc reads it only as
W[n, k], with n a spatial and k a reduction axis of one block: `ivit_dense*` from the frontend,
or a fused PrimFunc holding one (after FuseRequantize), so the pass works before or after
fusion. For a BlockedLayout (bn, bk) the constant becomes
    P (ceil(N/bn), ceil(K/bk), bn, bk) int8, P[n // bn, k // bk, n % bn, k % bk] = W[n, k],
zero padded, and the PrimFunc reads P through s_tir's transform_layout (P[n // bn, ...] for
n < N, k < K: the padding is never read). Layouts per target:
- llvm (x86 VNNI): (16, 4): one vpdpbusd consumes 4 k of 16 output channels;
- cuda: none, W stays (N, K): both the NT tensor-core GEMM (mma with trans_b) and dp4a (4
  consecutive k packed in an int32) read K-contiguous rows of W.
The packed PrimFunc is named `<original>_<layout.name>` (e.g. ivit_dense5_n16k4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
import tvm_ffi
from tvm import ir, relax, s_tir, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator

from .module_utils import drop_orphans

WEIGHT_DTYPE = "int8"
ASSUMPTIONS_SUFFIX = "_assumptions"  # transform_layout's padding-assumption block


@dataclass(frozen=True)
class BlockedLayout:
    """(N, K) -> (ceil(N/block_n), ceil(K/block_k), block_n, block_k), zero padded."""

    block_n: int
    block_k: int

    @property
    def name(self) -> str:
        return f"n{self.block_n}k{self.block_k}"

    def index_map(self, n, k):
        """The TIR index map (n, k) -> packed index."""
        return (n // self.block_n, k // self.block_k, n % self.block_n, k % self.block_k)

    def pack(self, weight: np.ndarray) -> np.ndarray:
        """The packed copy of an (N, K) weight, padding rows and columns with zeros."""
        rows, cols = weight.shape
        tiles_n, tiles_k = -(-rows // self.block_n), -(-cols // self.block_k)
        padded = np.zeros((tiles_n * self.block_n, tiles_k * self.block_k), weight.dtype)
        padded[:rows, :cols] = weight
        tiles = padded.reshape(tiles_n, self.block_n, tiles_k, self.block_k)
        return np.ascontiguousarray(tiles.transpose(0, 2, 1, 3))  # (N/bn, K/bk, bn, bk)


VNNI = BlockedLayout(block_n=16, block_k=4)
TARGET_LAYOUTS: dict[str, BlockedLayout | None] = {"llvm": VNNI, "cuda": None}


def layout_for_target(target_kind: str) -> BlockedLayout | None:
    """The weight layout of a target kind's GEMM schedule (None: keep (N, K))."""
    if target_kind not in TARGET_LAYOUTS:
        raise ValueError(
            f"no weight layout for target kind {target_kind!r}; known: {sorted(TARGET_LAYOUTS)}"
        )
    return TARGET_LAYOUTS[target_kind]


def _blocks(func: tirx.PrimFunc) -> list:
    blocks = []
    tvm_ffi.structural_walk(func, (s_tir.stmt.SBlock, blocks.append))
    return blocks


def _loads_of(node, buffer) -> list:
    loads = []

    def visit(load):
        if load.source.same_as(buffer):
            loads.append(load)

    tvm_ffi.structural_walk(node, (ir.TensorLoad, visit))
    return loads


def _is_dense_access(load, spatial: set, reduce: set) -> bool:
    """W[n, k] with n a spatial and k a reduction iterator of the enclosing block."""
    if len(load.indices) != 2:
        return False
    n, k = load.indices
    return isinstance(n, ir.Var) and isinstance(k, ir.Var) and n in spatial and k in reduce


def dense_weight_block(func: tirx.PrimFunc, param_index: int) -> str | None:
    """The block reading func's param only as a dense weight W[n, k], or None."""
    buffer = func.params[param_index]
    load_count = len(_loads_of(func, buffer))
    found, dense_count = None, 0
    for block in _blocks(func):  # the root block holds every load but has no iterators
        loads = _loads_of(block.body, buffer)
        spatial = {iv.var for iv in block.iter_vars if iv.iter_type != tirx.IterVar.CommReduce}
        reduce = {iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.CommReduce}
        if loads and all(_is_dense_access(load, spatial, reduce) for load in loads):
            found, dense_count = block.name_hint, dense_count + len(loads)
    return found if load_count > 0 and dense_count == load_count else None


def _dense_weight_args(func: tirx.PrimFunc, args) -> dict[int, str]:
    """{argument index: block name} for the constant 2-D int8 dense weights among args."""
    weights = {}
    for index, arg in enumerate(args):
        ty = arg.ty if isinstance(arg, ir.Constant) else None
        if not isinstance(ty, relax.TensorType) or ty.ndim != 2 or str(ty.dtype) != WEIGHT_DTYPE:
            continue
        block = dense_weight_block(func, index)
        if block is not None:
            weights[index] = block
    return weights


def _is_assumption(stmt) -> bool:
    """A loop nest around transform_layout's `buffer_<name>_assumptions` block only."""
    names = []
    tvm_ffi.structural_walk(stmt, (s_tir.stmt.SBlock, lambda block: names.append(block.name_hint)))
    return bool(names) and all(name.endswith(ASSUMPTIONS_SUFFIX) for name in names)


def _drop_assumptions(stmts, mutator):
    kept = [mutator.mutate(stmt) for stmt in stmts.seq if not _is_assumption(stmt)]
    return kept[0] if len(kept) == 1 else tirx.SeqStmt(kept)


def pack_primfunc(func: tirx.PrimFunc, weights: dict[int, str], layout: BlockedLayout):
    """func with each listed weight parameter read in the packed layout.

    transform_layout states "the padding is zero" in a block that reads the weight and writes
    nothing; the block is dropped: the compute never reads the padding, BlockedLayout.pack
    fills it with zeros anyway, and schedules expect every block to write a buffer.
    """
    schedule = s_tir.Schedule(func)
    for index, block in weights.items():
        schedule.transform_layout(
            schedule.get_sblock(block), func.params[index], layout.index_map, pad_value=0
        )
    return tvm_ffi.structural_mutate(schedule.mod["main"], (tirx.SeqStmt, _drop_assumptions))


@mutator
class _PackRewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, layout: BlockedLayout):
        super().__init__(mod)
        self.mod = mod
        self.layout = layout
        self.packed_funcs: dict[tuple[str, tuple[int, ...]], ir.GlobalVar] = {}
        self.packed_weights: dict[ir.Constant, ir.Constant] = {}  # a shared weight stays shared

    def transform(self) -> tvm.IRModule:
        for gv, func in self.mod.functions_items():
            if isinstance(func, relax.Function):
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.get()

    def _packed_callee(self, gv: ir.GlobalVar, weights: dict[int, str]) -> ir.GlobalVar:
        key = (gv.name_hint, tuple(sorted(weights)))
        if key not in self.packed_funcs:
            packed = pack_primfunc(self.mod[gv], weights, self.layout)
            name = f"{gv.name_hint}_{self.layout.name}"
            self.packed_funcs[key] = self.builder_.add_func(packed, name)
        return self.packed_funcs[key]

    def _packed_weight(self, weight: ir.Constant) -> ir.Constant:
        if weight not in self.packed_weights:
            packed = self.layout.pack(weight.value.numpy())  # (N/bn, K/bk, bn, bk) int8
            self.packed_weights[weight] = relax.const(packed, WEIGHT_DTYPE)
        return self.packed_weights[weight]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        is_call_tir = isinstance(call.op, ir.Op) and call.op.name == "relax.call_tir"
        if not is_call_tir or len(call.args) != 2:  # (a call with tir_vars is left alone)
            return call
        gv, args = call.args[0], list(call.args[1].fields)
        if not isinstance(self.mod[gv], tirx.PrimFunc):
            return call
        weights = _dense_weight_args(self.mod[gv], args)
        if not weights:
            return call
        for index in weights:
            args[index] = self._packed_weight(args[index])
        return relax.call_tir(self._packed_callee(gv, weights), args, list(call.ty_args))


@tvm.transform.module_pass(opt_level=0, name="PackWeights")
class PackWeights:
    """Rewrite constant dense weights into `layout` (None: leave the module as it is)."""

    def __init__(self, layout: BlockedLayout | None):
        self.layout = layout

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        if self.layout is None:
            return mod
        return drop_orphans(mod, _PackRewriter(mod, self.layout).transform())
