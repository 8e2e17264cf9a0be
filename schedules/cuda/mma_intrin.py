"""The project's registration of the int8 tensor-core intrinsics the mma GEMM (mma.py) uses.

They are TVM's own `mma_ldmatrix_i8_a`, `mma_ldmatrix_i8_b_trans`, `mma_i8i8i32_trans_b` and
`mma_fill_16x16_i32` (tvm/s_tir/tensor_intrin/cuda.py), specialised to int8 and registered
under project names: importing `tvm.s_tir.tensor_intrin` builds every tensor-core intrinsic of
every dtype (25 s on a quiet machine, 7 minutes measured on a loaded 2-core one), these four
take about a second. Each is a pair (description, implementation): `tensorize` checks that a
scheduled block is structurally equal to the description, then swaps in the implementation,
so the descriptions below are what the CPU twin (twin.py) runs in their place.

One warp computes a 16x16 int32 tile C += A (16x32 int8, row-major) x B^T (B 16x32 int8, k
contiguous) as two `mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32`. Registers hold the
tiles in "warp" buffers [32 lanes, elements per lane] laid out by the index maps below.
"""

from __future__ import annotations

from tvm.runtime import convert
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.tirx import IntImm

LDMATRIX_A = "ivit_mma_ldmatrix_i8_a"  # shared A tile 16x32 -> warp [32, 16]
LDMATRIX_B = "ivit_mma_ldmatrix_i8_b_trans"  # shared B tile 16x32 (k contiguous) -> warp [32, 16]
MMA_SYNC = "ivit_mma_i8i8i32_trans_b"  # warp C [32, 8] += A x B^T
MMA_FILL = "ivit_mma_fill_16x16_i32"  # warp C [32, 8] = 0
# uint8 A (the low bytes of int16 attention probabilities, ops.low_byte): mma.sync .u8.s8
LDMATRIX_A_U8 = "ivit_mma_ldmatrix_u8_a"
MMA_SYNC_U8 = "ivit_mma_u8i8i32_trans_b"
A_DTYPES = ("int8", "uint8")

WARP = 32
TILE_M = TILE_N = 16  # one intrinsic's C tile
TILE_K = 32  # one intrinsic's reduction depth
AB_LANE = TILE_M * TILE_K // WARP  # int8 elements of A (or B) per lane: 16
C_LANE = TILE_M * TILE_N // WARP  # int32 elements of C per lane: 8


def c_layout(i, j):
    """(lane, element) of C[i, j] in a 16x16 tile (mma.sync's accumulator fragment)."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + j % 2


def ab_layout(i, k):
    """(lane, element) of A[i, k] (or B[j, k]) in a 16x32 int8 tile (ldmatrix x4 fragment)."""
    return 4 * (i % 8) + (k % 16) // 4, 8 * (k // 16) + (i // 8) * 4 + k % 4


def _ldmatrix(scope: str, transpose: bool, offset, dtype: str = "int8"):
    """ldmatrix.x4 of a 16x32 8-bit (`dtype`) shared tile into a warp fragment;
    `offset(lane, stride)` is the shared-memory element each lane points at."""

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (TILE_M, TILE_K), dtype, align=64,
                                offset_factor=TILE_K, scope=scope)
        warp = T.match_buffer(warp_handle, (WARP, AB_LANE), dtype, align=64,
                              offset_factor=TILE_K, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:TILE_M, 0:TILE_K])
            T.writes(warp[0:WARP, 0:AB_LANE])
            for ax0, ax1 in T.grid(TILE_M, TILE_K):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])
                    T.reads(shared[v0, v1])
                    lane, element = T.meta_var(ab_layout(v0, v1))
                    T.writes(warp[lane, element])
                    warp[lane, element] = shared[v0, v1]

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (TILE_M, TILE_K), dtype, align=64,
                                offset_factor=TILE_K, scope=scope, strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (WARP, AB_LANE), dtype, align=64,
                              offset_factor=TILE_K, scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:TILE_M, 0:TILE_K])
            T.writes(warp[0:WARP, 0:AB_LANE])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                T.evaluate(T.ptx_legacy.ldmatrix(
                    transpose, 4, ".b16", warp.data, warp.elem_offset + convert(AB_LANE) * tx,
                    shared.access_ptr("r"), offset(tx, s0), dtype=dtype))

    return desc, impl


def _offset_a(tx, stride):
    return stride * (tx % 16) + 16 * (tx // 16)


def _offset_b(tx, stride):
    half = convert(WARP // 2)
    return stride * 8 * (tx // half) + (tx % 8) * stride + 16 * ((tx % half) // 8)


def _mma(a_dtype: str):
    """(description, implementation) of C += A x B^T on one 16x16x32 tile, A of `a_dtype`."""

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, AB_LANE), a_dtype, align=64, offset_factor=TILE_K,
                           scope="warp")
        B = T.match_buffer(b, (WARP, AB_LANE), "int8", align=64, offset_factor=TILE_K,
                           scope="warp")
        C = T.match_buffer(c, (WARP, C_LANE), "int32", align=64, offset_factor=TILE_N,
                           scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:C_LANE], A[0:WARP, 0:AB_LANE], B[0:WARP, 0:AB_LANE])
            T.writes(C[0:WARP, 0:C_LANE])
            for i, j, k in T.grid(TILE_M, TILE_N, TILE_K):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    lane_c, element_c = T.meta_var(c_layout(vi, vj))
                    lane_a, element_a = T.meta_var(ab_layout(vi, vk))
                    lane_b, element_b = T.meta_var(ab_layout(vj, vk))
                    T.reads(C[lane_c, element_c], A[lane_a, element_a], B[lane_b, element_b])
                    T.writes(C[lane_c, element_c])
                    C[lane_c, element_c] += (T.Cast("int32", A[lane_a, element_a])
                                             * T.Cast("int32", B[lane_b, element_b]))

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, AB_LANE), a_dtype, align=64, offset_factor=TILE_K,
                           scope="warp")
        B = T.match_buffer(b, (WARP, AB_LANE), "int8", align=64, offset_factor=TILE_K,
                           scope="warp")
        C = T.match_buffer(c, (WARP, C_LANE), "int32", align=64, offset_factor=TILE_N,
                           scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:C_LANE], A[0:WARP, 0:AB_LANE], B[0:WARP, 0:AB_LANE])
            T.writes(C[0:WARP, 0:C_LANE])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for half in T.unroll(2):  # the two n8 halves of the 16-wide C tile
                    T.evaluate(T.ptx_legacy.mma(
                        "m16n8k32", "row", "col", a_dtype, "int8", "int32",
                        A.data, A.elem_offset + tx * AB_LANE,
                        B.data, B.elem_offset + tx * AB_LANE + half * (AB_LANE // 2),
                        C.data, C.elem_offset + tx * C_LANE + half * (C_LANE // 2),
                        False, dtype="int32"))

    return desc, impl


@T.prim_func(s_tir=True)
def _fill_desc(a: T.handle) -> None:
    C = T.match_buffer(a, [WARP, C_LANE], dtype="int32", scope="warp")
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:WARP, 0:C_LANE])
        for i0, i1 in T.grid(TILE_M, TILE_N):
            with T.sblock("C_warp"):
                i, j = T.axis.remap("SS", [i0, i1])
                lane, element = T.meta_var(c_layout(i, j))
                T.reads()
                T.writes(C[lane, element])
                C[lane, element] = IntImm("int32", 0)


@T.prim_func(s_tir=True)
def _fill_impl(a: T.handle) -> None:
    C = T.match_buffer(a, [WARP, C_LANE], dtype="int32", scope="warp", offset_factor=1)
    with T.sblock("root"):
        T.reads()
        T.writes(C[0:WARP, 0:C_LANE])
        for _tx in T.thread_binding(0, WARP, "threadIdx.x"):
            T.evaluate(T.cuda.mma_fill_legacy(C_LANE, C.data, C.elem_offset, dtype="int32"))


def ldmatrix_names(scope: str, a_dtype: str = "int8") -> tuple[str, str]:
    """The (A, B) ldmatrix intrinsics reading shared memory of `scope` ("shared"/"shared.dyn")
    for an A operand of `a_dtype` (B is int8)."""
    suffix = "_dyn" if scope == "shared.dyn" else ""
    name_a = LDMATRIX_A_U8 if a_dtype == "uint8" else LDMATRIX_A
    return name_a + suffix, LDMATRIX_B + suffix


def mma_name(a_dtype: str = "int8") -> str:
    """The mma.sync intrinsic for an A operand of `a_dtype` (B is int8)."""
    return MMA_SYNC_U8 if a_dtype == "uint8" else MMA_SYNC


def register() -> None:
    """Register the intrinsics once per process."""
    if TensorIntrin.get(MMA_SYNC, allow_missing=True) is not None:
        return
    for a_dtype in A_DTYPES:
        for scope in ("shared", "shared.dyn"):
            name_a, _ = ldmatrix_names(scope, a_dtype)
            TensorIntrin.register(name_a, *_ldmatrix(scope, False, _offset_a, a_dtype))
        TensorIntrin.register(mma_name(a_dtype), *_mma(a_dtype))
    for scope in ("shared", "shared.dyn"):
        TensorIntrin.register(ldmatrix_names(scope)[1], *_ldmatrix(scope, False, _offset_b))
    TensorIntrin.register(MMA_FILL, _fill_desc, _fill_impl)
