"""VerifyIntegerOnly: prove that no float op or float constant sits on the integer data path.

The data path is every Relax function except the entry ("main"). The entry may only quantize
the float images (the PrimFunc `ivit_quantize_input`, the one float reader) and call the integer
graph. On the data path every parameter, binding and constant must have an integer or bool
dtype, and every PrimFunc reached through call_tir must hold no float buffer, variable, cast,
constant or arithmetic. PrimFuncs are judged by their bodies, not their names, so the check
holds after legalization and fusion (fused_... functions) too.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
import tvm_ffi
from tvm import ir, relax, tirx

from ivit_tvm.ops.names import INPUT_QUANTIZE, INPUT_QUANTIZE_FUNC

ENTRY = "main"
CALL_TIR_OPS = ("relax.call_tir", "relax.call_tir_inplace", "relax.call_tir_with_grad")
QUANTIZER_NAME = INPUT_QUANTIZE_FUNC  # frontend or FuseOps/FuseTIR name
MAX_FINDINGS_PER_PRIMFUNC = 4


@tvm_ffi.register_error  # keeps the class when the error crosses a TVM pass boundary
class IntegerOnlyError(ValueError):
    """The module computes with floats between the input quantization and the logits."""


@dataclass(frozen=True)
class Violation:
    function: str  # the Relax function holding the binding
    binding: str  # the bound variable (or parameter / return value)
    op: str  # the PrimFunc name or Relax op name
    detail: str  # what is float about it

    def __str__(self) -> str:
        return f"{self.function}: {self.binding} = {self.op}: {self.detail}"


def is_integer_dtype(dtype) -> bool:
    """int*/uint*/bool; float, bfloat, float8 and unknown ("void") dtypes are not."""
    return str(dtype).startswith(("int", "uint", "bool"))


def _non_integer_dtypes(ty) -> list[str]:
    """The non-integer element dtypes inside a Relax type (tensors, tuples, prim values)."""
    if isinstance(ty, relax.TensorType | ir.PrimType):
        return [] if is_integer_dtype(ty.dtype) else [str(ty.dtype)]
    if isinstance(ty, relax.TupleType):
        return [dtype for field in ty.fields for dtype in _non_integer_dtypes(field)]
    return []  # shapes, objects, functions carry no data dtype


def _op_name(value) -> str:
    """Name a binding's value: the PrimFunc of a call_tir, a Relax op or a called function."""
    if isinstance(value, relax.Call):
        if isinstance(value.op, ir.Op):
            if value.op.name in CALL_TIR_OPS and isinstance(value.args[0], ir.GlobalVar):
                return value.args[0].name_hint
            return value.op.name
        if isinstance(value.op, ir.GlobalVar):
            return value.op.name_hint
        if isinstance(value.op, relax.ExternFunc):
            return value.op.global_symbol
    if isinstance(value, relax.Var):
        return f"alias of {value.name}"
    if isinstance(value, ir.Constant):
        return "constant"
    return type(value).__name__


def _callee_primfunc(mod: tvm.IRModule, value) -> tuple[str, tirx.PrimFunc] | None:
    """(name, PrimFunc) when value is a call_tir-like call of a PrimFunc in mod."""
    if not (isinstance(value, relax.Call) and isinstance(value.op, ir.Op)):
        return None
    if value.op.name not in CALL_TIR_OPS or not isinstance(value.args[0], ir.GlobalVar):
        return None
    gv = value.args[0]
    func = mod[gv] if gv in mod else None
    return (gv.name_hint, func) if isinstance(func, tirx.PrimFunc) else None


def _describe_float_node(node) -> str | None:
    """A short description of a float TIR node, or None when the node is not float."""
    ty = getattr(node, "ty", None)
    if isinstance(ty, tirx.BufferType):
        dtype = ty.dtype
        return None if is_integer_dtype(dtype) else f"{dtype} buffer {node.name}"
    if not isinstance(ty, ir.PrimType) or is_integer_dtype(ty.dtype) or str(ty.dtype) == "handle":
        return None
    dtype = ty.dtype
    if isinstance(node, ir.Var):
        return f"{dtype} variable {node.name}"
    if isinstance(node, tirx.FloatImm):
        return f"float constant {node.value!r}"
    if isinstance(node, tirx.Cast):
        return f"cast to {dtype}"
    if isinstance(node, ir.TensorLoad):
        return f"{dtype} load of {node.source.name}"
    if isinstance(node, ir.Call) and isinstance(node.op, ir.Op):
        return f"{dtype} call {node.op.name}"
    return f"{dtype} {type(node).__name__}"


def float_uses_in_primfunc(func: tirx.PrimFunc) -> list[str]:
    """Every distinct float buffer, variable, constant, cast or operation in a PrimFunc."""
    found: dict[str, None] = {}
    float_types = []

    def visit(node):
        if isinstance(node, ir.PrimType):
            if not is_integer_dtype(node.dtype) and str(node.dtype) != "handle":
                float_types.append(str(node.dtype))
            return
        description = _describe_float_node(node)
        if description is not None:
            found.setdefault(description)

    tvm_ffi.structural_walk(func, visit, order="pre")
    if not found and float_types:  # a float type in a node kind the walk above does not name
        found.setdefault(f"{float_types[0]} type in the body")
    return list(found)


def _float_constants_in_value(value) -> list[str]:
    """The dtypes of the float constants inside a binding's value (tensor or scalar)."""
    found: dict[str, None] = {}

    def visit(node):
        ty = node.ty
        if isinstance(ty, relax.TensorType | ir.PrimType) and not is_integer_dtype(ty.dtype):
            found.setdefault(str(ty.dtype))

    tvm_ffi.structural_walk(value, (ir.Constant, visit))
    return list(found)


def _bindings(func: relax.Function) -> list:
    """Every VarBinding and MatchCast in func, nested blocks included, in program order."""
    bindings = []
    tvm_ffi.structural_walk(func, ((relax.VarBinding, relax.MatchCast), bindings.append),
                            order="pre")
    return bindings


def _primfunc_violations(name: str, func: tirx.PrimFunc, where: str, binding: str):
    uses = float_uses_in_primfunc(func)
    if not uses:
        return []
    shown = ", ".join(uses[:MAX_FINDINGS_PER_PRIMFUNC])
    more = len(uses) - MAX_FINDINGS_PER_PRIMFUNC
    shown += f" and {more} more" if more > 0 else ""
    return [Violation(where, binding, name, f"PrimFunc body computes with floats: {shown}")]


def _check_data_path(mod: tvm.IRModule, name: str, func: relax.Function) -> list[Violation]:
    violations = []
    for param in func.params:
        for dtype in _non_integer_dtypes(param.ty):
            violations.append(Violation(name, param.name, "parameter", f"{dtype} input"))
    for binding in _bindings(func):
        var, value = binding.var, binding.value
        op = _op_name(value)
        for dtype in _non_integer_dtypes(var.ty):
            violations.append(Violation(name, var.name, op, f"produces {dtype}"))
        for dtype in _float_constants_in_value(value):
            violations.append(Violation(name, var.name, op, f"uses a {dtype} constant"))
        callee = _callee_primfunc(mod, value)
        if callee is not None:
            violations += _primfunc_violations(*callee, name, var.name)
    for dtype in _non_integer_dtypes(func.ret_ty):
        violations.append(Violation(name, "return value", "return", f"returns {dtype}"))
    return violations


def _check_entry(mod: tvm.IRModule, name: str, func: relax.Function) -> list[Violation]:
    """The entry: float parameters, then only input quantization and calls of Relax functions."""
    violations = []
    for binding in _bindings(func):
        var, value = binding.var, binding.value
        op = _op_name(value)
        callee = _callee_primfunc(mod, value)
        quantizes = callee is not None and QUANTIZER_NAME.fullmatch(callee[0]) is not None
        calls_graph = isinstance(value, relax.Call) and isinstance(value.op, ir.GlobalVar) \
            and value.op in mod and isinstance(mod[value.op], relax.Function)
        if not (quantizes or calls_graph or isinstance(value, relax.Var)):
            violations.append(Violation(
                name, var.name, op,
                f"the entry may only call {INPUT_QUANTIZE} and the integer graph (a Relax "
                "function)",
            ))
            continue
        for dtype in _non_integer_dtypes(var.ty):  # the quantizer's output included
            violations.append(Violation(name, var.name, op, f"produces {dtype}"))
    return violations


def find_float_violations(mod: tvm.IRModule, entry: str = ENTRY) -> list[Violation]:
    """All float values on the data path of mod (empty when it is integer-only)."""
    violations = []
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        check = _check_entry if gv.name_hint == entry else _check_data_path
        violations += check(mod, gv.name_hint, func)
    return violations


def verify_integer_only(mod: tvm.IRModule, entry: str = ENTRY) -> None:
    """Raise IntegerOnlyError naming every float op, binding and constant on the data path."""
    violations = find_float_violations(mod, entry)
    if violations:
        lines = "\n".join(f"  - {violation}" for violation in violations)
        raise IntegerOnlyError(
            f"the graph must be integer-only between {INPUT_QUANTIZE} and the logits, but "
            f"{len(violations)} value(s) are float:\n{lines}\n"
            "Find the frontend method or pass that emitted them; floats belong only in the "
            f"entry function {entry!r} before quantization."
        )


@tvm.transform.module_pass(opt_level=0, name="VerifyIntegerOnly")
class VerifyIntegerOnly:
    """Module pass form of verify_integer_only: returns the module unchanged or raises."""

    def __init__(self, entry: str = ENTRY):
        self.entry = entry

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        verify_integer_only(mod, self.entry)
        return mod
