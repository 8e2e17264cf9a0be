"""Table lookups as in-register permutes: ShiftGELU's int8 table (AVX512-VBMI byte permutes)
and Shiftmax's int32 exponential table (AVX512-BW word permutes).

## ShiftGELU (ops.shiftgelu_lookup)

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
from ivit_tvm.ops.shiftmax import EXP_BLOCK, TABLE_SPAN
from ivit_tvm.ops.tir_query import find_block, uses_var

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


# ---- Shiftmax's exponential table ----------------------------------------------------------------
# ops.shiftmax with exp_table reads, per element, e = table[(q - max + 255) & 255] from a (256,)
# int32 table. LLVM vectorizes that as vpgatherdd, which on Zen 4 takes about 40 cycles per 16
# lanes (60 % of the whole Shiftmax kernel). Split into its low and high 16-bit halves, the table
# is 2 x 8 zmm of 32 words, and 32 lanes look up as
#
#     idx = (int16(q) - max + 255) & 255                      # 32 x int16
#     part_k = vpermi2w(plane[2k], idx, plane[2k + 1])       # entries 64k + (idx & 63), k < 4
#     half = idx & 128 ? (idx & 64 ? part_3 : part_2) : (idx & 64 ? part_1 : part_0)
#     e = int32(uint16(low half)) | int32(high half) << 16
#
# (vpermi2w reads the low 6 bits of each index; bit 5 picks the first or second plane), about 4x
# faster than the gather in a C model of the loop on Zen 4. The planes are loop-invariant loads of
# the table (LLVM hoists them out of the row loop). Masked Shiftmax (Swin's shifted windows)
# selects the masked logits' constant over the looked-up lanes.
EXP_LANES = 32  # int16 lanes per zmm
WORD_PERMUTE = "llvm.x86.avx512.vpermi2var.hi.512"  # <32 x i16> (table a, index, table b)
PLANE_WORDS = 32  # table entries per plane register
PERMUTE_ENTRIES = 64  # entries one vpermi2w covers (two planes)


def _exp_parts(store: tirx.BufferStore):
    """(table load, the two int8 loads in its index, mask) of Shiftmax's table exponential,
    else None; mask: None, or (mask load, the masked logits' constant exponential) for
    Select(mask != 0, constant, table[...]) (Swin's shifted windows)."""
    value, mask = store.value, None
    if isinstance(value, tirx.Select):
        cond, masked, value = value.condition, value.true_value, value.false_value
        if not (isinstance(cond, tirx.NE) and isinstance(cond.a, TensorLoad)
                and isinstance(cond.b, tirx.IntImm) and int(cond.b) == 0
                and isinstance(masked, tirx.IntImm)):
            return None
        mask = (cond.a, int(masked))
    if not isinstance(value, TensorLoad) or len(value.indices) != 1:
        return None
    table = value.source.ty
    if str(table.dtype) != "int32" or [int(e) for e in table.shape] != [TABLE_SPAN + 1]:
        return None
    loads: list[TensorLoad] = []
    tvm_ffi.structural_walk(value.indices[0], (TensorLoad, loads.append))
    if len(loads) != 2 or any(str(load.source.ty.dtype) != "int8" for load in loads):
        return None
    return value, loads, mask


def exp_lookup_applies(func: tirx.PrimFunc) -> bool:
    """The kernel holds Shiftmax's table exponential (ops.shiftmax, exp_table)."""
    block = find_block(func, EXP_BLOCK)
    return block is not None and isinstance(block.body, tirx.BufferStore) and \
        _exp_parts(block.body) is not None


def _word_lookup(table: TensorLoad, index: tirx.PrimExpr) -> tirx.PrimExpr:
    """int32 x EXP_LANES: table[index] for an int16 x EXP_LANES index in [0, 256)."""
    lanes, words = EXP_LANES, f"int16x{EXP_LANES}"
    index_dtype = str(table.indices[0].ty)
    chunks = [tirx.BufferLoad(table.source, [tirx.Ramp(tirx.IntImm(index_dtype, start), 1,
                                                       PLANE_WORDS)])
              for start in range(0, TABLE_SPAN + 1, PLANE_WORDS)]  # 8 x int32x32
    sixteen = tirx.Broadcast(tirx.IntImm("int32", 16), PLANE_WORDS)
    planes = {"low": [tirx.Cast(words, c) for c in chunks],
              "high": [tirx.Cast(words, tirx.shift_right(c, sixteen)) for c in chunks]}

    def bit(value: int) -> tirx.PrimExpr:  # bool x lanes: index & value != 0
        mask = tirx.bitwise_and(index, tirx.Broadcast(tirx.IntImm("int16", value), lanes))
        return tirx.NE(mask, tirx.Broadcast(tirx.IntImm("int16", 0), lanes))

    bit6, bit7 = bit(PERMUTE_ENTRIES), bit(2 * PERMUTE_ENTRIES)
    halves = {}
    for name, plane in planes.items():
        parts = [tirx.call_llvm_pure_intrin(words, WORD_PERMUTE, plane[2 * k], index,
                                            plane[2 * k + 1])
                 for k in range((TABLE_SPAN + 1) // PERMUTE_ENTRIES)]
        halves[name] = tirx.Select(bit7, tirx.Select(bit6, parts[3], parts[2]),
                                   tirx.Select(bit6, parts[1], parts[0]))
    int32s = f"int32x{lanes}"
    low = tirx.Cast(int32s, tirx.Cast(f"uint16x{lanes}", halves["low"]))
    high = tirx.shift_left(tirx.Cast(int32s, halves["high"]),
                           tirx.Broadcast(tirx.IntImm("int32", 16), lanes))
    return tirx.bitwise_or(low, high)


def _exp_steps(loop: tirx.For) -> tirx.Stmt:
    """The exponential's row loop (extent >= EXP_LANES) as vector steps (see above): one per
    EXP_LANES elements, and a last one ending at the row's end where the extent is not a
    multiple (it recomputes a few elements of the step before it: the same values)."""
    realize = loop.body
    block = realize.block
    store = block.body
    binding = {iv.var: value for iv, value in zip(block.iter_vars, realize.iter_values,
                                                   strict=True)}
    table, loads, mask = _exp_parts(store)
    (q_load,) = [load for load in loads
                 if any(uses_var(substitute(i, binding), loop.loop_var) for i in load.indices)]
    (max_load,) = [load for load in loads if load is not q_load]
    words, extent = f"int16x{EXP_LANES}", int(loop.extent)

    def step_at(first: tirx.PrimExpr) -> tirx.BufferStore:
        bound = {var: substitute(value, {loop.loop_var: first})
                 for var, value in binding.items()}

        def lanes(indices) -> list:
            *lead, last = (substitute(i, bound) for i in indices)
            return [*lead, tirx.Ramp(last, 1, EXP_LANES)]

        q = tirx.Cast(words, tirx.BufferLoad(q_load.source, lanes(q_load.indices)))
        row_max = tirx.BufferLoad(max_load.source, [substitute(i, bound)
                                                    for i in max_load.indices])
        span = tirx.Broadcast(tirx.IntImm("int16", TABLE_SPAN), EXP_LANES)
        x = tirx.Sub(q, tirx.Broadcast(tirx.Cast("int16", row_max), EXP_LANES))  # [-255, 255]
        index = tirx.bitwise_and(tirx.Add(x, span), span)  # ops.shiftmax's (x + 255) & 255
        value = _word_lookup(table, index)
        if mask is not None:
            load, masked = mask
            flags = tirx.BufferLoad(load.source, lanes(load.indices))
            zero = tirx.Broadcast(tirx.IntImm(str(load.source.ty.dtype), 0), EXP_LANES)
            value = tirx.Select(tirx.NE(flags, zero),
                                tirx.Broadcast(tirx.IntImm("int32", masked), EXP_LANES), value)
        return tirx.BufferStore(store.buffer, value, lanes(store.indices))

    dtype = loop.loop_var.ty.dtype
    step = tirx.Var("step", dtype)
    steps = tirx.For(step, tirx.IntImm(dtype, 0), tirx.IntImm(dtype, extent // EXP_LANES),
                     tirx.ForKind.SERIAL, step_at(loop.min + step * EXP_LANES))
    if extent % EXP_LANES == 0:
        return steps
    return tirx.SeqStmt([steps, step_at(loop.min + tirx.IntImm(dtype, extent - EXP_LANES))])


def vectorize_exp_lookup(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """The scheduled Shiftmax kernel with its exponential's row loop in EXP_LANES-wide permute
    steps (see above); rows shorter than EXP_LANES keep the gather loop."""

    def post(node):
        if not (isinstance(node, tirx.For) and isinstance(node.body, s_tir.SBlockRealize)
                and node.body.block.name_hint == EXP_BLOCK
                and isinstance(node.extent, tirx.IntImm) and int(node.extent) >= EXP_LANES):
            return node
        return _exp_steps(node)

    return map_func(func, post)
