"""ShiftGELU's table lookup (ops.shiftgelu_lookup) as AVX512-VBMI byte permutes.

The kernel reads, per element, table[max + 128, q + 128] from a (256, 256) int8 table whose row
is fixed for a whole row of q. A plain vectorized loop gathers those bytes one load per lane
(about a cycle per element). With VBMI, the row's 256 bytes are four zmm registers and

    lo = vpermi2b(row[0:64], q, row[64:128])      # lane i: row[(q_i + 128) & 127] for q_i < 0
    hi = vpermi2b(row[128:192], q, row[192:256])  # lane i: row[128 + q_i] for q_i >= 0
    out[c:c+64] = q >= 0 ? hi : lo

looks up 64 values (vpermi2b indexes with the low 7 bits of each byte of q; bit 6 picks the
first or second table register; q's sign bit is bit 7 of q + 128, which picks lo or hi).

`schedule_lookup`: rows parallel, the row max computed under the row loop, the row split into
64-byte steps, each step blockized; `vectorize_lookup` (after scheduling: no schedule
primitive can express it, and tensorize cannot match a load nested in an index, see
docs/tvm-notes.md) replaces each step's loop by the vector statement above.
"""

from __future__ import annotations

import tvm_ffi
from tvm import s_tir, tirx
from tvm.ir.expr import TensorLoad
from tvm.s_tir import Schedule

from ivit_tvm.ops.shiftgelu import LOOKUP_BLOCK, ROW_MAX_BLOCK

from ..tir_rewrite import map_func, substitute

LANES = 64  # int8 lanes per zmm
STEP_BLOCK = f"{LOOKUP_BLOCK}_o"  # blockize's name for the 64-lane step
PERMUTE = "llvm.x86.avx512.vpermi2var.qi.512"  # <64 x i8> (table a, index, table b)
TABLE_BYTES = 256


def lookup_applies(sch: Schedule) -> bool:
    """The lookup's output is int8 and its rows a static multiple of 64 (no tail)."""
    block = sch.get(sch.get_sblock(LOOKUP_BLOCK))
    out = block.writes[0].source.ty
    channels = out.shape[-1]
    return (str(out.dtype) == "int8" and isinstance(channels, tirx.IntImm)
            and int(channels) % LANES == 0)


def schedule_lookup(sch: Schedule) -> None:
    """Rows parallel with their max, 64-byte steps blockized (see the module)."""
    lookup = sch.get_sblock(LOOKUP_BLOCK)
    *rows, channels = sch.get_loops(lookup)
    row = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    sch.parallel(row)
    sch.compute_at(sch.get_sblock(ROW_MAX_BLOCK), row, preserve_unit_loops=False)  # LLVM
    # vectorizes its max reduction (vpmaxsb); TVM's vectorize takes no reduction loop
    _, step = sch.split(channels, [None, LANES])
    sch.blockize(step)


def _step_store(step: s_tir.SBlock) -> tirx.BufferStore:
    """out[..., c] = table[row, (q[..., c] + 128) & 255] for one 64-lane step, as permutes."""
    realize = step.body.body  # For (64 lanes) -> the element block
    element = realize.block
    (lane,) = element.iter_vars
    store = element.body
    table_load = store.value
    found: list[TensorLoad] = []
    tvm_ffi.structural_walk(table_load.indices[-1], (TensorLoad, found.append))
    (q_load,) = found
    first = {lane.var: tirx.IntImm(str(lane.var.ty), 0)}

    def lanes(indices) -> list:
        *lead, last = indices
        return [substitute(i, first) for i in lead] + [tirx.Ramp(substitute(last, first), 1,
                                                                 LANES)]

    q = tirx.BufferLoad(q_load.source, lanes(q_load.indices))  # int8x64
    row = list(table_load.indices[:-1])
    index_dtype = str(table_load.indices[-1].ty)
    parts = [tirx.BufferLoad(table_load.source,
                             [*row, tirx.Ramp(tirx.IntImm(index_dtype, start), 1, LANES)])
             for start in range(0, TABLE_BYTES, LANES)]  # the row's 4 x 64 bytes
    low = tirx.call_llvm_pure_intrin(f"int8x{LANES}", PERMUTE, parts[0], q, parts[1])
    high = tirx.call_llvm_pure_intrin(f"int8x{LANES}", PERMUTE, parts[2], q, parts[3])
    value = tirx.Select(q >= tirx.Broadcast(tirx.IntImm("int8", 0), LANES), high, low)
    return tirx.BufferStore(store.buffer, value, lanes(store.indices))


def vectorize_lookup(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Replace every blockized 64-lane lookup step by its vpermi2b statement."""

    def post(node):
        if not isinstance(node, s_tir.SBlock) or node.name_hint != STEP_BLOCK:
            return node
        return s_tir.SBlock(list(node.iter_vars), list(node.reads), list(node.writes),
                            node.name_hint, _step_store(node), node.init,
                            list(node.alloc_buffers), list(node.match_buffers),
                            dict(node.annotations))

    return map_func(func, post)
