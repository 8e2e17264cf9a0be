"""The dense GEMMs' layout fold (CUDA, schedules/fold_layout.dense_group): which layout kernels
it may take in (moves_whole_rows) and what it leaves of Swin's windows."""

from __future__ import annotations

import tvm
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.fold_layout import GATHER_FUNC, LAYOUT_FUNC, moves_whole_rows
from support import SWIN, quantized
from tvm import relax, tirx

from ivit_tvm.compile import apply_graph_passes, lower_model


def layout_funcs(config) -> dict[str, tirx.PrimFunc]:
    """The legalized layout and gather PrimFuncs of a model, by name."""
    info = make_target("cuda", arch="sm_80")
    mod = apply_graph_passes(lower_model(quantized(config), info)).mod
    mod = relax.transform.LegalizeOps()(mod)
    return {gv.name_hint: func for gv, func in mod.functions_items()
            if isinstance(func, tirx.PrimFunc)
            and (LAYOUT_FUNC.fullmatch(gv.name_hint) or GATHER_FUNC.fullmatch(gv.name_hint))}


def test_swin_windows_move_whole_rows_and_patch_embedding_does_not():
    """Swin's window partition and reverse (reshapes keeping C, the window transpose, the
    roll's takes) move whole channel rows; the patch embedding's reshape of (C, p, p) pixels
    into K does not."""
    funcs = layout_funcs(SWIN)
    rows = {name for name, func in funcs.items() if moves_whole_rows(func)}
    takes = {name for name in funcs if GATHER_FUNC.fullmatch(name)}
    assert takes and takes <= rows
    shapes = {name: [int(e) for e in func.params[0].ty.shape[1:]] for name, func in funcs.items()}
    windows = [name for name, shape in shapes.items()
               if name.startswith("transpose") and len(shape) == 5 and shape[2] != 3]
    assert windows and set(windows) <= rows  # (B, h, ws, w, ws, C) -> (B, h, w, ws, ws, C)
    patch = [name for name, shape in shapes.items()
             if name.startswith("reshape") and shape[2:] == [3, 4, 4]]  # (B, Hp, Wp, C, p, p)
    assert len(patch) == 1 and patch[0] not in rows


def test_moves_whole_rows_refuses_a_changed_last_extent():
    x = tvm.te.placeholder((2, 6, 4), "int8", name="x")
    swapped = tvm.te.compute((2, 4, 6), lambda b, i, j: x[b, j, i], name="T_transpose")
    assert not moves_whole_rows(tvm.te.create_prim_func([x, swapped]))
    kept = tvm.te.compute((2, 6, 4), lambda b, i, j: x[b, 5 - i, j], name="T_flip")
    assert moves_whole_rows(tvm.te.create_prim_func([x, kept]))
