"""Which instructions the int8 GEMMs use on each CPU ISA (targets.Capabilities.isa).

| isa          | dense (constant weights)                    | q @ k^T            | p @ v      |
|--------------|---------------------------------------------|--------------------|------------|
| avx512vnni   | vpdpbusd zmm: x + 128 (uint8) x W int8, g 4 | vpdpbusd, shifted  | vpdpwssd   |
| avxvnni      | {vex} vpdpbusd ymm, the same layouts        | {vex} vpdpbusd     | {vex} vpdpwssd |
| avx2         | vpmaddwd ymm: x int16 x W int16, g 2        | vpmaddwd, widened  | vpmaddwd   |
| generic      | vectorized loop, W int8, g 1                | plain batch matmul | plain      |

g: the K values one int32 lane sums per instruction, the last axis of a packed operand
[N/16, K/g, 16, g]. uint8 x int8 needs the activations shifted by +128 and the per-channel
correction -128 * sum_k W[n, k]; int16 x int16 (operands widened exactly from int8) needs
neither. The widened dense weights are packed as int16 at compile time (twice the bytes, no
widening in the inner loop).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..targets import Capabilities
from .avx2 import PMADDWD_INTRIN, register_pmaddwd
from .vnni import (
    AVXVNNI_I16_INTRIN,
    AVXVNNI_INTRIN,
    K_GROUP,
    K_GROUP_I16,
    VNNI_I16_INTRIN,
    VNNI_INTRIN,
    register,
)

SHIFT = 128  # int8 -> uint8 offset of the activations for u8 x s8 instructions


@dataclass(frozen=True)
class GemmPath:
    """The GEMM instructions of one ISA (see the module's table)."""

    isa: str
    vector_bytes: int  # register width the register blocks are sized for
    group: int  # K values per int32 lane of the packed dense weight: 4, 2 or 1
    u8s8: str | None = None  # tensor intrinsic: uint8 x int8 in groups of 4
    s16s16: str | None = None  # tensor intrinsic: int16 x int16 in pairs

    @property
    def weight_dtype(self) -> str:
        """The packed dense weight's dtype: int16 for the pair instructions, else int8."""
        return "int16" if self.group == K_GROUP_I16 else "int8"

    @property
    def shift(self) -> int:
        """The activations' offset in the dense: 128 with uint8 x int8, 0 with int16 x int16."""
        return 0 if self.weight_dtype == "int16" else SHIFT

    def intrinsic(self, operand_dtype: str) -> str | None:
        """The registered tensor intrinsic for a GEMM whose first operand is `operand_dtype`
        ("uint8": groups of 4, "int16": pairs), or None (a vectorized loop)."""
        name = {"uint8": self.u8s8, "int16": self.s16s16}.get(operand_dtype)
        if name is None:
            return None
        return register_pmaddwd() if name == PMADDWD_INTRIN else register(name)


PATHS = {
    "avx512vnni": GemmPath("avx512vnni", 64, K_GROUP, VNNI_INTRIN, VNNI_I16_INTRIN),
    "avxvnni": GemmPath("avxvnni", 32, K_GROUP, AVXVNNI_INTRIN, AVXVNNI_I16_INTRIN),
    "avx2": GemmPath("avx2", 32, K_GROUP_I16, None, PMADDWD_INTRIN),
    "generic": GemmPath("generic", 16, 1),
}


def gemm_path(caps: Capabilities) -> GemmPath:
    """The GemmPath of a target's capabilities (caps.isa; "generic" for one it does not know).
    The generic path sizes its loops for the target's vector width."""
    path = PATHS.get(caps.isa, PATHS["generic"])
    if path.isa == "generic":
        return GemmPath("generic", caps.vector_bytes, 1)
    return path
