"""Replace one block of a fused PrimFunc by the loop nests of a TE compute definition.

The GEMMs arrive fused with their epilogues (FuseOps, or relay_passes.FuseRequantize), so a
new GEMM formulation (padded, packed, shifted) cannot be swapped in at the Relax level. Here
the loop nest holding the GEMM block is cut out of the fused PrimFunc and the nests of a TE
definition go in its place, writing the same buffer; the epilogue blocks stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tvm_ffi
from tvm import te, tirx
from tvm.ir.expr import Var
from tvm.s_tir.stmt import SBlock, SBlockRealize

from ivit_tvm.ops.tir_query import block_names, seq_stmts


def splice(
    func: tirx.PrimFunc,
    block_name: str,
    compute: Callable[..., te.Tensor],
    inputs: Sequence[Var | tuple],
    output: Var,
) -> tuple[SBlockRealize, list[Var]]:
    """func's body with the root-level nest around `block_name` replaced by `compute`'s nests.

    compute(*placeholders) -> te.Tensor, one placeholder per entry of `inputs`: a buffer of
    func (a Var, reused as is) or a new parameter given as (shape, dtype, name). The result is
    written to `output`, a buffer of func. Returns the new body and the Vars of the new
    parameters, for the caller to place among the function's parameters (`rebuild`). Check
    the block with `tir_query.find_block` first.
    """
    placeholders = []
    for item in inputs:
        shape, dtype, name = (item.ty.shape, item.ty.dtype, "in") if isinstance(item, Var) else item
        placeholders.append(te.placeholder(shape, str(dtype), name=name))
    made = te.create_prim_func([*placeholders, compute(*placeholders)])
    remap = {made.params[-1]: output}
    new_params = []
    for item, var in zip(inputs, made.params[:-1], strict=True):
        if isinstance(item, Var):
            remap[var] = item
        else:
            new_params.append(var)
    made_root = tvm_ffi.structural_mutate(made.body.block, (Var, lambda v, _m: remap.get(v, v)))

    root = func.body.block
    stmts = seq_stmts(root.body)
    (index,) = [i for i, stmt in enumerate(stmts) if block_name in block_names(stmt)]
    stmts[index : index + 1] = seq_stmts(made_root.body)
    new_root = SBlock(
        root.iter_vars, root.reads, root.writes, root.name_hint, tirx.SeqStmt(stmts), root.init,
        [*root.alloc_buffers, *made_root.alloc_buffers], root.match_buffers, root.annotations,
    )
    return SBlockRealize(func.body.iter_values, func.body.predicate, new_root), new_params


def rebuild(func: tirx.PrimFunc, params: Sequence[Var], body: SBlockRealize) -> tirx.PrimFunc:
    """func with new parameters and body, its attributes kept."""
    return tirx.PrimFunc(list(params), body, func.ret_type, func.attrs)

