"""integer_pipeline: verify, fuse, pack, verify; the compiled DeiT stays bit-exact."""

import numpy as np
import pytest
import torch
import tvm
from support import deit_and_images
from tvm import relax

from ivit_tvm.frontend import from_model
from relay_passes import IntegerOnlyError, integer_pipeline


@pytest.fixture(scope="module")
def deit():
    model, images = deit_and_images()
    return model, from_model(model).mod, images  # mod: symbolic batch


def _names(mod: tvm.IRModule) -> set[str]:
    return {gv.name_hint for gv in mod.get_global_vars()}


@pytest.fixture(scope="module")
def llvm_vm(deit) -> relax.VirtualMachine:
    _, mod, _ = deit
    executable = tvm.compile(integer_pipeline("llvm")(mod),
                             target=tvm.target.Target({"kind": "llvm"}))
    return relax.VirtualMachine(executable, tvm.cpu())


@pytest.mark.parametrize("batch", [1, 3])
def test_llvm_pipeline_compiles_bit_exact_at_any_batch(deit, llvm_vm, batch):
    model, _, images = deit
    logits = llvm_vm["main"](tvm.runtime.tensor(images[:batch].numpy())).numpy()  # (B, 10) int32
    with torch.no_grad():
        expected = model.forward_integer(images[:batch])[0].numpy()
    np.testing.assert_array_equal(logits, expected)


def test_llvm_pipeline_fuses_and_packs_every_dense(deit):
    _, mod, _ = deit
    names = _names(integer_pipeline("llvm")(mod))
    dense = sorted(name for name in names if "ivit_dense" in name)
    assert dense == [
        "fused_ivit_dense1_ivit_requantize2_n16k4",
        "fused_ivit_dense2_ivit_requantize5_n16k4",
        "fused_ivit_dense3_ivit_requantize6_n16k4",
        "fused_ivit_dense4_ivit_requantize5_n16k4",
        "fused_ivit_dense_ivit_requantize_n16k4",
        "ivit_dense5_n16k4",
    ]


def test_cuda_pipeline_fuses_but_keeps_weights_nk(deit):
    _, mod, _ = deit
    names = _names(integer_pipeline("cuda")(mod))
    assert "fused_ivit_dense_ivit_requantize" in names
    assert not any(name.endswith("_n16k4") for name in names)


def test_llvm_pipeline_without_packing_keeps_weights_nk(deit):
    _, mod, _ = deit
    names = _names(integer_pipeline("llvm", pack_weights=False)(mod))
    assert "fused_ivit_dense_ivit_requantize" in names
    assert not any(name.endswith("_n16k4") for name in names)


def test_pipeline_refuses_a_float_module(deit):
    _, mod, _ = deit
    q_images = relax.Var("q_images", mod["main_int8"].params[0].ty)
    bb = relax.BlockBuilder(mod)
    with bb.function("float_detour", [q_images]):  # a data-path function beside main_int8
        with bb.dataflow():
            as_float = bb.emit(relax.op.astype(q_images, "float32"))
            back = bb.emit(relax.op.astype(as_float, "int8"))
            logits = bb.emit_output(relax.Call(mod.get_global_var("main_int8"), [back]))
        bb.emit_func_output(logits)
    with pytest.raises(IntegerOnlyError, match="float_detour: lv = relax.astype: produces float32"):
        integer_pipeline("llvm")(bb.finalize())


def test_unknown_target_kind_is_refused():
    with pytest.raises(ValueError, match="known: \\['cuda', 'llvm'\\]"):
        integer_pipeline("vulkan")
