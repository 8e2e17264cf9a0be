"""VerifyIntegerOnly: float values on the data path are named; integer modules pass."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from ivit_tvm.frontend import from_model
from ivit_tvm.models import create_model
from ivit_tvm.quant import set_calibration
from relay_passes import IntegerOnlyError, VerifyIntegerOnly, verify_integer_only

W = np.arange(12, dtype="int8").reshape(3, 4) - 6  # (N, K) int8


@I.ir_module
class Clean:
    @T.prim_func(private=True, s_tir=True)
    def ivit_quantize_input(
        x: T.Buffer((T.int64(2), T.int64(4)), "float32"),
        q: T.Buffer((T.int64(2), T.int64(4)), "int8"),
    ):
        for i, j in T.grid(T.int64(2), T.int64(4)):
            with T.sblock("quantize_input"):
                vi, vj = T.axis.remap("SS", [i, j])
                q[vi, vj] = T.Cast("int8", T.round(x[vi, vj] / T.float32(0.5)))

    @T.prim_func(private=True, s_tir=True)
    def ivit_dense(
        x: T.Buffer((T.int64(2), T.int64(4)), "int8"),
        w: T.Buffer((T.int64(3), T.int64(4)), "int8"),
        acc: T.Buffer((T.int64(2), T.int64(3)), "int32"),
    ):
        for i, j, k in T.grid(T.int64(2), T.int64(3), T.int64(4)):
            with T.sblock("dense_acc"):
                vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                with T.init():
                    acc[vi, vj] = 0
                acc[vi, vj] = acc[vi, vj] + T.Cast("int32", x[vi, vk]) * T.Cast("int32", w[vj, vk])

    @R.function
    def main_int8(x: R.Tensor((2, 4), "int8")) -> R.Tensor((2, 3), "int32"):
        cls = Clean
        with R.dataflow():
            y = R.call_tir(cls.ivit_dense, (x, R.const(W)), out_ty=R.Tensor((2, 3), "int32"))
            R.output(y)
        return y

    @R.function
    def main(images: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 3), "int32"):
        cls = Clean
        with R.dataflow():
            q = R.call_tir(cls.ivit_quantize_input, (images,), out_ty=R.Tensor((2, 4), "int8"))
            R.output(q)
        logits = cls.main_int8(q)
        return logits


def _with_main_int8(mod: tvm.IRModule, func: relax.Function) -> tvm.IRModule:
    """mod with main_int8 replaced (the other functions stay)."""
    mod = mod.clone()
    mod[mod.get_global_var("main_int8")] = func
    return mod


def _error(mod) -> str:
    with pytest.raises(IntegerOnlyError) as info:
        verify_integer_only(mod)
    return str(info.value)


def test_clean_module_passes_unchanged():
    verify_integer_only(Clean)
    tvm.ir.assert_structural_equal(VerifyIntegerOnly()(Clean), Clean)


def test_astype_to_float_and_back_names_the_op_and_binding():
    @R.function
    def main_int8(x: R.Tensor((2, 4), "int8")) -> R.Tensor((2, 3), "int32"):
        with R.dataflow():
            y = R.call_tir(Clean.get_global_var("ivit_dense"), (x, R.const(W)),
                           out_ty=R.Tensor((2, 3), "int32"))
            y_float = R.astype(y, "float32")
            z = R.astype(y_float, "int32")
            R.output(z)
        return z

    message = _error(_with_main_int8(Clean, main_int8))
    assert "main_int8: y_float = relax.astype: produces float32" in message
    assert "1 value(s) are float" in message


def test_float_constant_multiply_names_the_constant():
    @R.function
    def main_int8(x: R.Tensor((2, 4), "int8")) -> R.Tensor((2, 3), "int32"):
        with R.dataflow():
            y = R.call_tir(Clean.get_global_var("ivit_dense"), (x, R.const(W)),
                           out_ty=R.Tensor((2, 3), "int32"))
            scaled = R.multiply(R.astype(y, "float32"), R.const(0.5, "float32"))
            z = R.astype(scaled, "int32")
            R.output(z)
        return z

    message = _error(_with_main_int8(Clean, main_int8))
    assert "main_int8: scaled = relax.multiply: uses a float32 constant" in message
    assert "main_int8: scaled = relax.multiply: produces float32" in message


@I.ir_module
class FloatInsideFusedKernel:
    @T.prim_func(private=True, s_tir=True)
    def fused_ivit_dense_rescale(
        acc: T.Buffer((T.int64(2), T.int64(3)), "int32"),
        q: T.Buffer((T.int64(2), T.int64(3)), "int8"),
    ):
        for i, j in T.grid(T.int64(2), T.int64(3)):
            with T.sblock("rescale"):
                vi, vj = T.axis.remap("SS", [i, j])
                q[vi, vj] = T.Cast("int8", T.Cast("float32", acc[vi, vj]) * T.float32(0.25))

    @R.function
    def main_int8(acc: R.Tensor((2, 3), "int32")) -> R.Tensor((2, 3), "int8"):
        cls = FloatInsideFusedKernel
        with R.dataflow():
            q = R.call_tir(cls.fused_ivit_dense_rescale, (acc,), out_ty=R.Tensor((2, 3), "int8"))
            R.output(q)
        return q


def test_float_math_inside_an_integer_primfunc_is_found_by_content():
    message = _error(FloatInsideFusedKernel)
    assert "main_int8: q = fused_ivit_dense_rescale: PrimFunc body computes with floats" in message
    assert "cast to float32" in message
    assert "float constant 0.25" in message


def test_float_op_in_the_entry_before_quantization_is_rejected():
    @R.function
    def main(images: R.Tensor((2, 4), "float32")) -> R.Tensor((2, 3), "int32"):
        with R.dataflow():
            doubled = R.multiply(images, R.const(2.0, "float32"))
            q = R.call_tir(Clean.get_global_var("ivit_quantize_input"), (doubled,),
                           out_ty=R.Tensor((2, 4), "int8"))
            R.output(q)
        logits = Clean.get_global_var("main_int8")(q)
        return logits

    mod = Clean.clone()
    mod[mod.get_global_var("main")] = main
    message = _error(mod)
    assert "main: doubled = relax.multiply: the entry may only call ivit_quantize_input" in message


def test_error_keeps_its_type_through_a_pass_sequence():
    with pytest.raises(IntegerOnlyError, match="fused_ivit_dense_rescale"):
        tvm.transform.Sequential([VerifyIntegerOnly()])(FloatInsideFusedKernel)


@pytest.fixture(scope="module")
def deit_mod() -> tvm.IRModule:
    torch.manual_seed(0)
    model = create_model("deit_tiny", img_size=32, patch_size=8, depth=1, num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(images)
        set_calibration(model, False)
    return from_model(model).mod


def test_frontend_module_passes(deit_mod):
    verify_integer_only(deit_mod)


def test_frontend_module_passes_after_legalize_and_fuse(deit_mod):
    lowered = tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ])(deit_mod)
    assert any(gv.name_hint.startswith("fused_") for gv in lowered.get_global_vars())
    verify_integer_only(lowered)
