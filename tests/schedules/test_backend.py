"""schedules.backend: one Backend per target kind, capabilities resolved once per target."""

from __future__ import annotations

import pytest
import tvm
from ivit_tvm.schedules.backend import BACKENDS, get_backend, make_target
from ivit_tvm.schedules.cpu.rules import (
    CPU_RULES,
    BatchMatmul,
    ByteLookup,
    ExpLookup,
    FloatBatchMatmul,
    FloatDense,
    Generic,
    PackedAttention,
    PackedDense,
)
from tvm import relax, topi


def test_backends_cover_llvm_and_cuda():
    assert sorted(BACKENDS) == ["cuda", "llvm"]
    assert all(backend.kind == kind for kind, backend in BACKENDS.items())


def test_unknown_kind_is_refused_listing_the_kinds():
    with pytest.raises(ValueError, match="'rocm' not supported: choose one of cuda, llvm"):
        get_backend("rocm")
    with pytest.raises(ValueError, match="choose one of cuda, llvm"):
        make_target("vulkan")


@pytest.mark.parametrize(("mcpu", "vnni", "vector_bytes"), [
    ("x86-64", False, 16), ("haswell", False, 32), ("cascadelake", True, 64),
])
def test_llvm_capabilities_follow_the_mcpu(mcpu, vnni, vector_bytes):
    info = make_target("llvm", mcpu=mcpu)
    assert (info.caps.vnni, info.caps.vector_bytes) == (vnni, vector_bytes)
    assert info.kind == "llvm" and info.caps.cuda_arch is None


def test_capabilities_are_resolved_once(monkeypatch):
    """Resolving is make_target's job; the build reads the value it was given."""
    from ivit_tvm.schedules import targets

    info = make_target("llvm", mcpu="cascadelake")

    def no_feature_queries(*args):
        raise AssertionError("target features queried again")

    monkeypatch.setattr(targets.codegen, "target_has_features", no_feature_queries)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 64), "int32"))
    with bb.function("main", [x]):
        bb.emit_func_output(bb.emit_te(topi.add, x, x))
    assert get_backend("llvm").build(bb.get(), info) is not None


def test_llvm_resolve_keeps_the_given_target():
    target = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake"})
    info = get_backend("llvm").resolve(target)
    assert info.target.same_as(target) and info.caps.vnni


def test_cpu_rules_run_gemms_first_and_generic_last():
    kinds = [type(rule) for rule in CPU_RULES]
    assert kinds == [PackedDense, PackedAttention, ByteLookup, ExpLookup, BatchMatmul, FloatDense,
                     FloatBatchMatmul, Generic]
    assert get_backend("llvm").schedule_rules(make_target("llvm")) == list(CPU_RULES)


def test_cuda_rules_start_with_the_integer_gemm():
    from ivit_tvm.schedules.cuda.gemm import IntegerGemm

    rules = get_backend("cuda").schedule_rules(make_target("cuda", arch="sm_80"))
    assert isinstance(rules[0], IntegerGemm)
