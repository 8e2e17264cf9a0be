"""AVX2 dot-product intrinsic for llvm: vpmaddwd on int16 pairs (CPUs without VNNI).

    PMADDWD_INTRIN:  C[i] += sum_{k<2} int32(A[k]) * int32(B[i, k]),  A, B int16, i < 16

the description of vnni.VNNI_I16_INTRIN, computed as two 8-lane `vpmaddwd` (llvm.x86.avx2.
pmadd.wd) and `vpaddd` on ymm. A (one int16 pair) is broadcast to all lanes; B is one 64-byte
row of an operand packed as [N/16, K/2, 16, 2] int16.

Exactness: vpmaddwd sums two int16 x int16 products into an int32 lane without saturation; the
only pair that wraps is (-32768 * -32768) * 2 = 2^31. The GEMMs here always have one operand
that was int8 (widened exactly): |a * b| <= 2^15 * 2^7 = 2^22 per product, so a pair sum is
below 2^23 and exact. (Never vpmaddubsw: it saturates its int16 pair sums.)
"""

from __future__ import annotations

from tvm.script import tirx as T

from .vnni import dot_16x2_desc, register

PMADDWD_INTRIN = "ivit_dot_16x2_s16s16s32_avx2"


@T.prim_func(s_tir=True)
def _dot_16x2_avx2(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((16, 2), "int16", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 8)] = C[T.ramp(T.int32(0), 1, 8)] + T.call_llvm_pure_intrin(
            "int32x8",
            "llvm.x86.avx2.pmadd.wd",
            T.reinterpret(
                "int16x16", T.broadcast(T.reinterpret("int32", A.vload([0], "int16x2")), 8)
            ),
            B.vload([0, 0], "int16x16"),
        )
        C[T.ramp(T.int32(8), 1, 8)] = C[T.ramp(T.int32(8), 1, 8)] + T.call_llvm_pure_intrin(
            "int32x8",
            "llvm.x86.avx2.pmadd.wd",
            T.reinterpret(
                "int16x16", T.broadcast(T.reinterpret("int32", A.vload([0], "int16x2")), 8)
            ),
            B.vload([8, 0], "int16x16"),
        )


def register_pmaddwd() -> str:
    """Register PMADDWD_INTRIN once per process; returns its name for `sch.tensorize`."""
    return register(PMADDWD_INTRIN, {PMADDWD_INTRIN: (dot_16x2_desc, _dot_16x2_avx2)})
