"""integer_pipeline: verify, fuse, verify; the compiled DeiT stays bit-exact."""

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
    executable = tvm.compile(integer_pipeline()(mod),
                             target=tvm.target.Target({"kind": "llvm"}))
    return relax.VirtualMachine(executable, tvm.cpu())


@pytest.mark.parametrize("batch", [1, 3])
def test_llvm_pipeline_compiles_bit_exact_at_any_batch(deit, llvm_vm, batch):
    model, _, images = deit
    logits = llvm_vm["main"](tvm.runtime.tensor(images[:batch].numpy())).numpy()  # (B, 10) int32
    with torch.no_grad():
        expected = model.forward_integer(images[:batch])[0].numpy()
    np.testing.assert_array_equal(logits, expected)


def test_pipeline_fuses_every_dense_and_keeps_weights_nk(deit):
    """Weights stay (N, K): the CPU backend packs them for its own GEMM (schedules.cpu)."""
    _, mod, _ = deit
    names = _names(integer_pipeline()(mod))
    dense = sorted(name for name in names if "ivit_dense" in name)
    assert dense == [
        "fused_ivit_dense1_ivit_requantize2",
        "fused_ivit_dense2_ivit_requantize5",
        "fused_ivit_dense3_ivit_requantize6",
        "fused_ivit_dense4_ivit_requantize5",
        "fused_ivit_dense_ivit_requantize",
        "ivit_dense5",
    ]


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
        integer_pipeline()(bb.finalize())

