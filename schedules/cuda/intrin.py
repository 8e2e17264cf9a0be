"""The project's own registration of CUDA's dp4a (int8x4 dot product, int32 accumulate).

TVM registers the same intrinsic as "dp4a_s8s8s32" in `tvm.s_tir.tensor_intrin`, whose import
takes ~25 s (it builds every tensor-core intrinsic); this module registers an identical one
under a project name in milliseconds.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

DP4A_S8S8S32 = "ivit_dp4a_s8s8s32"


@T.prim_func(s_tir=True)
def _dp4a_desc(
    a: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
    b: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
    c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(c[0], a[0:4], b[0:4])
        T.writes(c[0])
        for i in range(4):
            with T.sblock("update"):
                vi = T.axis.remap("R", [i])
                c[0] = c[0] + T.cast(a[vi], "int32") * T.cast(b[vi], "int32")


@T.prim_func(s_tir=True)
def _dp4a_impl(
    a: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
    b: T.Buffer((4,), "int8", offset_factor=1, align=4, scope="shared"),
    c: T.Buffer((1,), "int32", offset_factor=1, align=4, scope="local"),
) -> None:
    with T.sblock("root"):
        T.reads(c[0], a[0:4], b[0:4])
        T.writes(c[0])
        c[0] += T.call_pure_extern(
            "__dp4a", a.vload([0], "int8x4"), b.vload([0], "int8x4"), T.int32(0), dtype="int32"
        )


def register() -> None:
    """Register DP4A_S8S8S32 once per process."""
    if TensorIntrin.get(DP4A_S8S8S32, allow_missing=True) is None:
        TensorIntrin.register(DP4A_S8S8S32, _dp4a_desc, _dp4a_impl)
