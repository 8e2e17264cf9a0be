"""VNNI dot-product intrinsics (vpdpbusd, vpdpwssd) for llvm: AVX512-VNNI on zmm, AVX-VNNI on ymm.

TVM's own `dot_16x4_vnni` breaks with LLVM 22 (vpdpbusd.512 now takes <64 x i8> operands), so
this module registers fixed ones under its own names:

    VNNI_INTRIN (vpdpbusd):  C[i] += sum_{k<4} int32(A[k]) * int32(B[i, k]),  A uint8, B int8
    VNNI_I16_INTRIN (vpdpwssd): C[i] += sum_{k<2} int32(A[k]) * int32(B[i, k]),  A, B int16

for i < 16 (C int32). A (4 bytes) is broadcast to all 16 lanes; B is one 64-byte row of an
operand packed as [N/16, K/g, 16, g]. The AVX-VNNI forms (AVXVNNI_INTRIN, AVXVNNI_I16_INTRIN:
the same descriptions, VEX-encoded on ymm, for CPUs with AVX-VNNI but no AVX-512) compute the
16 lanes as two 8-lane halves with the .256 LLVM intrinsics, which LLVM 22 emits as
`{vex} vpdpbusd` when the target has avxvnni and no avx512vl. The bodies hold one expression
per store, no temporaries: a temporary would become a one-element buffer, allocated per call
inside parallel loops, and LLVM would then no longer keep the accumulator tile in registers.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

VNNI_INTRIN = "ivit_dot_16x4_u8s8s32_vnni"
VNNI_I16_INTRIN = "ivit_dot_16x2_s16s16s32_vnni"
AVXVNNI_INTRIN = "ivit_dot_16x4_u8s8s32_avxvnni"
AVXVNNI_I16_INTRIN = "ivit_dot_16x2_s16s16s32_avxvnni"
LANES = 16  # int32 accumulators per 512-bit register
K_GROUP = 4  # bytes that vpdpbusd sums into one int32 lane
K_GROUP_I16 = 2  # int16 values that vpdpwssd sums into one int32 lane


@T.prim_func(s_tir=True)
def dot_16x4_desc(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        for i, k in T.grid(16, 4):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])


@T.prim_func(s_tir=True)
def _dot_16x4_vnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16",
            "llvm.x86.avx512.vpdpbusd.512",
            C[T.ramp(T.int32(0), 1, 16)],
            T.reinterpret(
                "uint8x64", T.broadcast(T.reinterpret("int32", A.vload([0], "uint8x4")), 16)
            ),
            B.vload([0, 0], "int8x64"),
        )


@T.prim_func(s_tir=True)
def dot_16x2_desc(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((16, 2), "int16", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        for i, k in T.grid(16, 2):
            with T.sblock("update"):
                vi, vk = T.axis.remap("SR", [i, k])
                C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])


@T.prim_func(s_tir=True)
def _dot_16x2_vnni(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((16, 2), "int16", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
            "int32x16",
            "llvm.x86.avx512.vpdpwssd.512",
            C[T.ramp(T.int32(0), 1, 16)],
            T.reinterpret(
                "int16x32", T.broadcast(T.reinterpret("int32", A.vload([0], "int16x2")), 16)
            ),
            B.vload([0, 0], "int16x32"),
        )


@T.prim_func(s_tir=True)
def _dot_16x4_avxvnni(
    A: T.Buffer((4,), "uint8", offset_factor=1),
    B: T.Buffer((16, 4), "int8", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:4], B[0:16, 0:4])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
            "int32x8",
            "llvm.x86.avx512.vpdpbusd.256",
            C[T.ramp(T.int32(0), 1, 8)],
            T.reinterpret(
                "uint8x32", T.broadcast(T.reinterpret("int32", A.vload([0], "uint8x4")), 8)
            ),
            B.vload([0, 0], "int8x32"),
        )
        C[T.ramp(T.int32(8), 1, 8)] = T.call_llvm_pure_intrin(
            "int32x8",
            "llvm.x86.avx512.vpdpbusd.256",
            C[T.ramp(T.int32(8), 1, 8)],
            T.reinterpret(
                "uint8x32", T.broadcast(T.reinterpret("int32", A.vload([0], "uint8x4")), 8)
            ),
            B.vload([8, 0], "int8x32"),
        )


@T.prim_func(s_tir=True)
def _dot_16x2_avxvnni(
    A: T.Buffer((2,), "int16", offset_factor=1),
    B: T.Buffer((16, 2), "int16", offset_factor=1),
    C: T.Buffer((16,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:16], A[0:2], B[0:16, 0:2])
        T.writes(C[0:16])
        C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
            "int32x8",
            "llvm.x86.avx512.vpdpwssd.256",
            C[T.ramp(T.int32(0), 1, 8)],
            T.reinterpret(
                "int16x16", T.broadcast(T.reinterpret("int32", A.vload([0], "int16x2")), 8)
            ),
            B.vload([0, 0], "int16x16"),
        )
        C[T.ramp(T.int32(8), 1, 8)] = T.call_llvm_pure_intrin(
            "int32x8",
            "llvm.x86.avx512.vpdpwssd.256",
            C[T.ramp(T.int32(8), 1, 8)],
            T.reinterpret(
                "int16x16", T.broadcast(T.reinterpret("int32", A.vload([0], "int16x2")), 8)
            ),
            B.vload([8, 0], "int16x16"),
        )


_INTRINSICS = {
    VNNI_INTRIN: (dot_16x4_desc, _dot_16x4_vnni),
    VNNI_I16_INTRIN: (dot_16x2_desc, _dot_16x2_vnni),
    AVXVNNI_INTRIN: (dot_16x4_desc, _dot_16x4_avxvnni),
    AVXVNNI_I16_INTRIN: (dot_16x2_desc, _dot_16x2_avxvnni),
}


def register(name: str = VNNI_INTRIN, intrinsics: dict | None = None) -> str:
    """Register an intrinsic once per process; returns its name for `sch.tensorize`.
    `intrinsics`: name -> (description, implementation), this module's by default."""
    if TensorIntrin.get(name, allow_missing=True) is None:
        TensorIntrin.register(name, *(intrinsics or _INTRINSICS)[name])
    return name

