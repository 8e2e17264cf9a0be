"""CPU schedule rules, one ordered list, the idiom of schedules.cuda's dlight rules.

Each rule may first rewrite a fused PrimFunc (swap a GEMM block for a packed formulation), then
recognizes blocks by their structure (dtypes, ranks) and the names the project's TE
definitions give them, schedules them, and claims them; `Generic`, last, schedules every block
no rule claimed. `pipeline.schedule_primfunc` runs the list.
"""

from __future__ import annotations

from collections.abc import Set

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.stmt import SBlock

from ivit_tvm.ops.tir_query import blocks

from ..targets import Capabilities
from ..tir_rewrite import drop_index_wraps
from . import dense, float_dense, lookup, matmul
from .division import rewrite_divisions
from .generic import schedule_generic
from .isa import gemm_path
from .rounding import rewrite_rounding_shifts


def _block(sch: Schedule, name: str) -> SBlock | None:
    """The block `name` of the scheduled function, or None."""
    return next((b for b in blocks(sch.mod["main"]) if b.name_hint == name), None)


def _operands(block: SBlock | None) -> list[tuple[int, str]]:
    """(rank, dtype) of each buffer a block reads; [] for no block."""
    if block is None:
        return []
    return [(len(r.source.ty.shape), str(r.source.ty.dtype)) for r in block.reads]


class CPURule:
    """One rule: `rewrite` a PrimFunc before scheduling; when it `match`es, `apply` schedules
    its blocks and returns their names (claimed: the generic rule leaves them alone), and
    `finish` may rewrite the scheduled PrimFunc where no schedule primitive reaches."""

    def rewrite(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        return func

    def finish(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        return func

    def match(self, sch: Schedule) -> bool:
        raise NotImplementedError

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        raise NotImplementedError


class PackedDense(CPURule):
    """dense.packed_dense's GEMM: (Mp, Kp) activations x weights packed 4-D, uint8 x int8
    (vpdpbusd, vectorized loop) or int16 x int16 (vpmaddwd)."""

    def match(self, sch: Schedule) -> bool:
        shift = _block(sch, dense.SHIFT_BLOCK)
        return shift is not None and _operands(_block(sch, dense.ACC_BLOCK)) in (
            [(2, "uint8"), (4, "int8")], [(2, "int16"), (4, "int16")]
        )

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        return dense.schedule_packed_dense(sch, gemm_path(caps))


class PackedAttention(CPURule):
    """Attention's batch matmuls on VNNI or AVX2: q @ k^T and p @ v rewritten with operands
    packed per head (matmul.py). On isa "generic" the plain batch matmul loop is faster: no
    rewrite."""

    def rewrite(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        path = gemm_path(caps)
        kind = matmul.matmul_kind(func, path)
        if kind is None:
            return func
        return matmul.rewrite_matmul(drop_index_wraps(func), kind, path.vector_bytes)

    def _kind(self, sch: Schedule) -> str | None:
        for kind, names in matmul.KIND_BLOCKS.items():
            if _block(sch, names[-1]) is not None:
                return kind
        return None

    def match(self, sch: Schedule) -> bool:
        return self._kind(sch) is not None

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        return matmul.schedule_packed_attention(sch, self._kind(sch), gemm_path(caps))

    def finish(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        # q @ k^T's requantize through float64 (packed_qk and packed_qk16 bound its values;
        # after inlining, where the bound shows): that kernel 4 % faster on Zen 4 (AVX-512),
        # 1.2x on its AVX2 build (x86-64-v3). Not in other kernels: a residual add's narrow
        # operand, exact there too, came out 0-19 % slower in the dense epilogue and 2.5x
        # slower in a standalone requantize_add (LLVM vectorized the mixed int64/float64
        # loop with gathers of the per-channel shifts).
        return rewrite_rounding_shifts(func, int64_converts=caps.int64_vectors)


class ByteLookup(CPURule):
    """ops.shiftgelu_lookup with an int8 table, on CPUs with AVX512-VBMI: vpermi2b from the
    row's table in registers (lookup.py). Elsewhere the generic rule's gather loop."""

    def match(self, sch: Schedule) -> bool:
        return _block(sch, lookup.LOOKUP_BLOCK) is not None and lookup.lookup_applies(sch)

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        if not caps.byte_permute:
            return set()
        lookup.schedule_lookup(sch)
        return {lookup.LOOKUP_BLOCK, lookup.ROW_MAX_BLOCK}

    def finish(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        return lookup.vectorize_lookup(func) if caps.byte_permute else func


class ExpLookup(CPURule):
    """Shiftmax's table exponential (masked or not) on CPUs with AVX512-BW: vpermi2w from the
    table's 16-bit halves in registers (lookup.py) instead of LLVM's gather. The generic rule
    schedules the kernel; the lookup is rewritten afterwards."""

    def match(self, sch: Schedule) -> bool:
        return lookup.exp_lookup_applies(sch.mod["main"])

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        return set()

    def finish(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        return lookup.vectorize_exp_lookup(func) if caps.word_permute else func


class BatchMatmul(CPURule):
    """ops.integer_batch_matmul's reduction, when PackedAttention left it as it is."""

    def match(self, sch: Schedule) -> bool:
        return len(_operands(_block(sch, matmul.MATMUL_BLOCK))) == 2

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        matmul.schedule_batch_matmul(sch, caps.vector_bytes)
        return {matmul.MATMUL_BLOCK}


class FloatDense(CPURule):
    """The float variant's packed GEMM: float32 rows (Mp, Kp) x float32 weights packed 4-D."""

    def match(self, sch: Schedule) -> bool:
        acc = _block(sch, float_dense.ACC_BLOCK)
        return _operands(acc) == [(2, "float32"), (4, "float32")]

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        float_dense.schedule_float_dense(sch)
        return {float_dense.ACC_BLOCK, float_dense.PAD_BLOCK}


class FloatBatchMatmul(CPURule):
    """The float variant's attention matmuls (float_dense.float_batch_matmul)."""

    def match(self, sch: Schedule) -> bool:
        return len(_operands(_block(sch, float_dense.MATMUL_BLOCK))) == 2

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        float_dense.schedule_float_batch_matmul(sch)
        return {float_dense.MATMUL_BLOCK}


class Generic(CPURule):
    """Everything else (generic.py); its rewrite makes int64 divisions vectorizable."""

    def rewrite(self, func: tirx.PrimFunc, caps: Capabilities) -> tirx.PrimFunc:
        return rewrite_divisions(func)

    def match(self, sch: Schedule) -> bool:
        return True

    def apply(self, sch: Schedule, caps: Capabilities, claimed: Set[str]) -> set[str]:
        schedule_generic(sch, caps.vector_bytes, claimed)
        return set()


# In this order: the GEMM rules claim their blocks before the generic rule runs.
CPU_RULES: tuple[CPURule, ...] = (
    PackedDense(), PackedAttention(), ByteLookup(), ExpLookup(), BatchMatmul(), FloatDense(),
    FloatBatchMatmul(), Generic(),
)
