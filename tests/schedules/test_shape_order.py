"""SortShapeStores: a shape function's independent stores come out in slot order whatever
order VMShapeLower emitted them in; dependent stores are left as they are."""

from __future__ import annotations

import tvm
from ivit_tvm.schedules.shape_order import sort_shape_stores
from tvm.script import tirx as T


def slots(mod: tvm.IRModule) -> list[int]:
    return [int(s.indices[0].value) for s in mod["shape_func"].body.seq]


def test_independent_stores_are_sorted_by_slot():
    @T.prim_func(private=True)
    def shape_func(H: T.Buffer((T.int64(4),), "int64")):
        H[T.int64(3)] = T.int64(6) * H[T.int64(0)]
        H[T.int64(1)] = T.int64(2) * H[T.int64(0)]
        H[T.int64(2)] = T.int64(4) * H[T.int64(0)] * T.int64(10)

    mod = tvm.IRModule({"shape_func": shape_func})
    assert slots(mod) == [3, 1, 2]
    assert slots(sort_shape_stores(mod)) == [1, 2, 3]


def test_stores_reading_a_written_slot_keep_their_order():
    @T.prim_func(private=True)
    def shape_func(H: T.Buffer((T.int64(4),), "int64")):
        H[T.int64(3)] = T.int64(6) * H[T.int64(0)]
        H[T.int64(1)] = T.int64(2) * H[T.int64(3)]

    mod = tvm.IRModule({"shape_func": shape_func})
    assert slots(sort_shape_stores(mod)) == [3, 1]
