"""FoldAttentionLayout: attention's layout kernels folded into its matmuls (CPU and CUDA).

The frontend splits attention's heads with layout ops (ivit_tvm.frontend.blocks):

    qkv (B, N, 3C) -> reshape (B, N, 3, h, d) -> strided_slice -> reshape -> transpose
                   -> q, k, v (B, h, N, d)
    probs @ v (B, h, N, d) -> transpose (B, N, h, d) -> reshape (B, N, C) -> requantize

Each of them is a kernel call and a round trip through memory (seven per block, 84 of
DeiT-S's kernels). This pass groups every attention matmul (a call_tir of an
`ivit_batch_matmul*` PrimFunc, fused or not) with the chain of layout call_tirs that produce
each operand and, when the matmul's result feeds only them, the layout chain and requantize
after it; relax.transform.FuseTIR then merges each group into one PrimFunc, where the layout
blocks are index arithmetic that the GEMM schedule inlines into its operand fetches and its
epilogue (CUDA: schedules/cuda/gemm.py, auto_inline_producers / auto_inline_consumer_chain
into the shared-memory fetches; CPU: schedules/cpu/matmul.py, into the per-head packing).
A chain shared by several matmuls (q, k and v all read the qkv reshape; both byte GEMMs of
16-bit probs @ V read v) is copied into each group, and the originals left unused are removed.

Layout call_tirs are recognised by the PrimFunc names LegalizeOps gives them (LAYOUT_FUNC);
the pass runs between LegalizeOps and FuseOps (`fusion_passes`, both pipelines).
"""

from __future__ import annotations

import re

import tvm
from tvm import relax, tirx

from ivit_tvm.ops import names
from ivit_tvm.ops.shapes import same_extent
from ivit_tvm.ops.tir_query import blocks, tensor_loads

LAYOUT_FUNC = re.compile(r"(reshape|transpose|strided_slice|broadcast_to)\d*")
GATHER_FUNC = re.compile(r"take\d*")  # Swin's roll: a gather by constant indices
CONSTANT = tvm.ir.expr.Constant  # relax.const(...)
SHIFTMAX_FUNC = re.compile(rf"(fused_)*({names.SHIFTMAX}|{names.SHIFTMAX_MASKED})\d*")
INJECTIVE = 2  # relax OpPatternKind: elementwise 0, broadcast 1, injective 2
ATTENTION_FUNC = re.compile(rf"(fused_)*{names.BATCH_MATMUL}\w*")
DENSE_FUNC = re.compile(rf"(fused_)*{names.DENSE}\w*")
GROUP_ATTR = "ivit.attention_layout"  # on each grouped Relax function, before FuseTIR


def _callee(value, mod: tvm.IRModule) -> str | None:
    """The PrimFunc name of a call_tir, else None."""
    if not (isinstance(value, relax.Call) and value.op.same_as(tvm.ir.Op.get("relax.call_tir"))):
        return None
    gv = value.args[0]
    return gv.name_hint if isinstance(mod[gv], tirx.PrimFunc) else None


def _tensor_args(call: relax.Call) -> list:
    return list(call.args[1].fields)


def _plain(call: relax.Call) -> bool:
    """A call_tir of tensors only: no symbolic-shape arguments (a kernel whose shapes do not
    name the batch as a plain variable takes it as a value), which a grouped function could
    not bind. The frontend avoids them (Swin's windows are (B, nW, ...), frontend/blocks.py)."""
    return len(call.args) == 2 and all(isinstance(arg.ty, relax.TensorType)
                                       for arg in _tensor_args(call))


class _Function:
    """One Relax function's dataflow bindings, by variable, with use counts."""

    def __init__(self, func: relax.Function, mod: tvm.IRModule, shiftmax=None):
        self.mod = mod
        self.shiftmax = shiftmax  # PrimFunc -> bool: may the matmul take in its Shiftmax
        self.binding = {}
        self.order = {}
        self.uses: dict = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                self.order[binding.var] = len(self.order)
                if isinstance(block, relax.DataflowBlock):
                    self.binding[binding.var] = binding
                for used in relax.analysis.free_vars(binding.value):
                    self.uses.setdefault(used, []).append(binding.var)
        for used in relax.analysis.free_vars(func.body.body):
            self.uses.setdefault(used, []).append(None)

    def callee(self, var) -> str | None:
        binding = self.binding.get(var)
        return None if binding is None else _callee(binding.value, self.mod)

    def producers(self, var, matmul: str | None = None, rows: bool = False) -> list:
        """The layout bindings producing `var`, innermost first (a single-input chain),
        after the Shiftmax producing the chain where `matmul` (a PrimFunc name) takes it in.
        rows: only links that move whole rows (moves_whole_rows), gathers included."""
        chain = []
        while (name := self.callee(var)) is not None and (
                LAYOUT_FUNC.fullmatch(name) or rows and GATHER_FUNC.fullmatch(name)):
            call = self.binding[var].value
            data, *indices = _tensor_args(call)
            if len(call.args) != 2 or not all(isinstance(i, CONSTANT) for i in indices) \
                    or (indices and not GATHER_FUNC.fullmatch(name)):
                break
            if rows and not moves_whole_rows(self.mod[name]):
                break
            chain.append(self.binding[var])
            var = data
        name = self.callee(var)
        if (matmul is not None and self.shiftmax is not None and name is not None
                and SHIFTMAX_FUNC.fullmatch(name) and self.shiftmax(self.mod[matmul])):
            chain.append(self.binding[var])  # its logits and table/mask: group inputs
        return chain[::-1]

    def consumers(self, var) -> list:
        """The bindings that alone consume `var` in turn while they are layout or elementwise
        call_tirs (op_pattern <= injective: requantize, Swin's position-bias add), each with
        the layout chains producing its other operands."""
        chain = []
        while len(users := self.uses.get(var, [])) == 1 and users[0] is not None:
            name = self.callee(users[0])
            if name is None or not (LAYOUT_FUNC.fullmatch(name) or self._injective(name)):
                break
            call = self.binding[users[0]].value
            if len(call.args) != 2:  # symbolic-shape arguments (tir_vars): left unfused
                break
            for arg in _tensor_args(call):
                if not arg.same_as(var):
                    chain.extend(self.producers(arg))
            chain.append(self.binding[users[0]])
            var = users[0]
        return chain

    def _injective(self, name: str) -> bool:
        func = self.mod[name]
        pattern = func.attrs.get("op_pattern") if func.attrs is not None else None
        return pattern is not None and int(pattern) <= INJECTIVE


def _group(bindings: list) -> tuple[relax.Function, list]:
    """A Primitive Relax function computing `bindings` (in order) and the outer values it
    takes: every argument not bound inside the group, constants included."""
    inside = {binding.var for binding in bindings}
    inputs: list = []
    for binding in bindings:
        for arg in _tensor_args(binding.value):
            if arg not in inside and not any(arg.same_as(seen) for seen in inputs):
                inputs.append(arg)
    params = [relax.Var(f"p{i}", arg.ty) for i, arg in enumerate(inputs)]
    renamed = dict(zip(inputs, params, strict=True))
    body = []
    for binding in bindings:
        call = binding.value
        args = [renamed.get(arg, arg) for arg in _tensor_args(call)]
        value = relax.Call(call.op, [call.args[0], relax.Tuple(args), *call.args[2:]],
                           call.attrs, call.ty_args)
        var = relax.DataflowVar(binding.var.name, binding.var.ty)
        renamed[binding.var] = var
        body.append(relax.VarBinding(var, value))
    out = renamed[bindings[-1].var]
    func = relax.Function(params, relax.SeqExpr([relax.DataflowBlock(body)], out), out.ty,
                          is_pure=True)
    return func.with_attr("Primitive", 1).with_attr(GROUP_ATTR, 1), inputs


def attention_groups(func: relax.Function, mod: tvm.IRModule, shiftmax=None,
                     dense: bool = False) -> list[tuple[str, list]]:
    """Per attention matmul with layout to fold: (its PrimFunc's name, the group's bindings in
    program order); shiftmax (PrimFunc -> bool): where it holds for the matmul, probs @ V's
    group takes the Shiftmax producing its probabilities. dense: dense GEMMs too (dense_group)."""
    index = _Function(func, mod, shiftmax)
    groups = []
    for var, binding in index.binding.items():
        name = _callee(binding.value, mod)
        if name is not None and ATTENTION_FUNC.fullmatch(name):
            members = [b for arg in _tensor_args(binding.value)
                       for b in index.producers(arg, name)]
            members += [binding, *index.consumers(var)]
        elif name is not None and dense and DENSE_FUNC.fullmatch(name):
            members = dense_group(index, var)
        else:
            continue
        if len(members) == 1 or not all(_plain(b.value) for b in members):
            continue
        unique = {b.var: b for b in members}
        groups.append((name, sorted(unique.values(), key=lambda b: index.order[b.var])))
    return groups


def moves_whole_rows(func: tirx.PrimFunc) -> bool:
    """Whether a layout or gather PrimFunc (one block) keeps its input's last axis: the
    output's last extent is the input's and each output element's last index reads the same
    last index (as the index itself or, in a legalized reshape, modulo the extent). Folded
    into a dense GEMM's operand, such a chain only picks rows, so each k tile of a row stays
    16 contiguous bytes (one cp.async); the patch embedding's reshape of (C, p, p) pixels into
    K does not, and its transpose stays a kernel."""
    block = next((b for b in blocks(func.body) if isinstance(b.body, tirx.BufferStore)), None)
    if block is None:
        return False
    store = block.body
    last, extent = block.iter_vars[-1].var, store.buffer.shape[-1]
    reads = [load for load in tensor_loads(store.value)
             if len(load.indices) > 1]  # the data (a gather's index table is 1-D)

    def is_last(index) -> bool:
        return index.same_as(last) or (isinstance(index, tirx.FloorMod) and index.a.same_as(last)
                                       and same_extent(index.b, extent))

    return bool(reads) and all(same_extent(load.source.shape[-1], extent)
                               and is_last(load.indices[-1]) for load in reads)


def dense_group(index: _Function, var) -> list:
    """A dense GEMM's group: the layout chain producing its input (gathers included: Swin's
    window partition after its roll) and the GEMM; [the GEMM] alone where no such chain
    moves whole rows (moves_whole_rows). The output side is left to FuseOps: Swin's window
    reverse folded into proj's epilogue made ptxas spill on sm_90 (its per-element index
    arithmetic with the symbolic batch), for 12 launches of Swin-T."""
    binding = index.binding[var]
    members = [b for arg in _tensor_args(binding.value)
               for b in index.producers(arg, rows=True)]
    return [*members, binding]


def fold_attention(shiftmax=None, dense: bool = False) -> tvm.transform.Pass:
    """FoldAttentionLayout; with shiftmax (PrimFunc -> bool, e.g. "runs on tensor cores"):
    FoldAttentionShiftmax, which also copies each Shiftmax into the group of every matmul
    reading its probabilities for which shiftmax(matmul) holds (CUDA: computed in the GEMM's
    prologue, schedules/cuda/prologue.py), so Shiftmax is not a kernel of its own.
    dense: dense GEMMs take in the layout producing their input too (dense_group; CUDA,
    whose GEMM schedule inlines it into the operand fetch; the CPU's dense packing does not)."""
    kind = "FoldAttentionLayout" if shiftmax is None else "FoldAttentionShiftmax"

    @tvm.transform.module_pass(opt_level=0, name=kind + ("+Dense" if dense else ""))
    def fold(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        return _fold(mod, shiftmax, dense)

    return fold


def _fold(mod: tvm.IRModule, shiftmax, dense: bool = False) -> tvm.IRModule:
    """Group attention matmuls with their layout chains (module docstring); FuseTIR merges
    the groups, DeadCodeElimination drops the layout calls left without users."""
    builder = relax.BlockBuilder(mod)
    count = 0
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, relax.Function) or func.attrs and "Primitive" in func.attrs:
            continue
        replace = {}
        for matmul, bindings in attention_groups(func, mod, shiftmax, dense):
            group, inputs = _group(bindings)
            group_gv = builder.add_func(group, f"{matmul}_heads")  # names keep the matmul's
            count += 1
            replace[bindings[-1].var] = relax.Call(group_gv, inputs)
        if replace:
            builder.update_func(gv, _rebind(func, replace))
    if count == 0:
        return mod
    return relax.transform.DeadCodeElimination()(relax.transform.Normalize()(builder.get()))


def _rebind(func: relax.Function, replace: dict) -> relax.Function:
    """`func` with the values of the bindings of `replace`'s variables replaced."""
    blocks = []
    for block in func.body.blocks:
        bindings = [relax.VarBinding(b.var, replace[b.var]) if b.var in replace else b
                    for b in block.bindings]
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty,
                          func.is_pure, func.attrs)


fold_attention_layout = fold_attention()


def fusion_passes(fold_shiftmax=None, fold_dense: bool = False) -> list[tvm.transform.Pass]:
    """Relax ops -> TIR, then fuse each GEMM/row op with its elementwise epilogue, and
    attention's matmuls with the head split and merge around them (TVM's legalize passes with
    FoldAttentionLayout before FuseOps). fold_shiftmax (PrimFunc -> bool): FoldAttentionShiftmax
    instead, folding Shiftmax into the probs @ V matmuls it holds for (fold_attention);
    fold_dense: dense GEMMs take in their layout too (fold_attention's dense)."""
    fold = (fold_attention_layout if fold_shiftmax is None and not fold_dense
            else fold_attention(fold_shiftmax, fold_dense))
    return [
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        fold,
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
