"""Shape and dtype checks shared by the TE operators; errors name the operand and the fix."""

from __future__ import annotations

from collections.abc import Sequence

from tvm import te, tirx
from tvm.sym import Analyzer

_ANALYZER = Analyzer()


def require_int(tensor: te.Tensor, op: str, operand: str) -> None:
    """Raise TypeError unless `tensor` holds integers (I-ViT kernels never take floats)."""
    if not str(tensor.dtype).startswith(("int", "uint")):
        raise TypeError(
            f"{op}: {operand} is {tensor.dtype}; integer kernels need an integer tensor "
            "(quantize it first)"
        )


def require_dtype(tensor: te.Tensor, dtype: str, op: str, operand: str) -> None:
    """Raise TypeError unless `tensor` is of `dtype`."""
    if str(tensor.dtype) != dtype:
        raise TypeError(f"{op}: {operand} is {tensor.dtype}; this kernel takes {dtype}")


def same_extent(a: tirx.PrimExpr | int, b: tirx.PrimExpr | int) -> bool:
    """True when two (possibly symbolic) extents are provably equal."""
    return bool(_ANALYZER.can_prove_equal(_as_i64(a), _as_i64(b)))


def _as_i64(extent: tirx.PrimExpr | int) -> tirx.PrimExpr:
    if isinstance(extent, int):
        return tirx.const(extent, "int64")
    return extent if str(extent.ty) == "int64" else extent.astype("int64")


def is_one(extent: tirx.PrimExpr | int) -> bool:
    return isinstance(extent, int | tirx.IntImm) and int(extent) == 1


def require_extent(actual, expected, op: str, what: str) -> None:
    """Raise ValueError unless `actual` provably equals `expected`."""
    if not same_extent(actual, expected):
        raise ValueError(f"{op}: {what} is {actual}, expected {expected}")


def broadcast_shape(a: Sequence, b: Sequence, op: str) -> list:
    """NumPy broadcasting of two shapes (right-aligned; each pair equal, or one of them 1).

    A symbolic extent broadcasts only against 1 or a provably equal extent.
    """
    rank = max(len(a), len(b))
    a = [1] * (rank - len(a)) + list(a)
    b = [1] * (rank - len(b)) + list(b)
    shape = []
    for axis, (ea, eb) in enumerate(zip(a, b, strict=True)):
        if is_one(ea):
            shape.append(eb)
        elif is_one(eb) or same_extent(ea, eb):
            shape.append(ea)
        else:
            raise ValueError(
                f"{op}: shapes {tuple(a)} and {tuple(b)} do not broadcast at axis {axis} "
                f"({ea} vs {eb}); give the operands equal extents there, or extent 1"
            )
    return shape


def broadcast_index(shape: Sequence, index: Sequence) -> tuple:
    """Index into a tensor of `shape` broadcast (NumPy rules) to an output indexed by `index`."""
    index = list(index)[len(index) - len(shape):]
    return tuple(0 if is_one(extent) else i for extent, i in zip(shape, index, strict=True))
