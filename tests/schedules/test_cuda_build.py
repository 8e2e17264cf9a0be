"""The CUDA build path: targets, GPU schedules, nvcc, exported artifacts, and (with a GPU)
bit-exact logits against PyTorch's integer reference."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import tvm
from ivit_tvm.schedules.backend import get_backend, make_target
from ivit_tvm.schedules.cuda.build import build_cuda
from ivit_tvm.schedules.cuda.inspect import (
    cuda_source,
    kernel_instructions,
    parse_ptxas_resources,
    report_cubin,
)
from ivit_tvm.schedules.cuda.pipeline import (
    require_gpu_schedule,
    schedule_module,
    unscheduled_functions,
)
from ivit_tvm.schedules.cuda.toolkit import compile_cubin_verbose, compile_kernels, find_cuda_home
from ivit_tvm.schedules.targets import host_cpu
from support import SWIN, defined_kernels, deit_and_images, quantized
from tvm import te

from ivit_tvm.compile import apply_graph_passes, lower_model
from ivit_tvm.frontend import from_model

ARCHS = ["sm_80", "sm_90"]
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
needs_cc = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                              reason="no C compiler for the driver stub")


def has_gpu() -> bool:
    return bool(tvm.cuda(0).exist)


@pytest.fixture(scope="module")
def deit():
    """A calibrated 2-block DeiT on 32x32 images and its Relax module (symbolic batch)."""
    model, _ = deit_and_images()
    return model, from_model(model)


@pytest.fixture(scope="module", params=ARCHS)
def built(request, deit):
    """(arch, executable, CUDA source) of the reduced DeiT, lowered as ivit-compile lowers it
    for the arch (compile.lower_model, the graph passes)."""
    info = make_target("cuda", arch=request.param)
    mod = apply_graph_passes(lower_model(deit[0], info)).mod
    executable = build_cuda(mod, info)
    return request.param, executable, cuda_source(executable)


def kernel_ptx(ptx: str, name_part: str) -> list[str]:
    """The PTX bodies of the entries whose name contains `name_part`."""
    bodies = re.split(r"(?=\.visible \.entry )", ptx)
    return [body for body in bodies if re.match(rf"\.visible \.entry \w*{name_part}", body)]


# ---- targets ----------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["sm_80", "sm_90", "sm_90a"])
def test_cuda_target_takes_the_arch(arch):
    info = make_target("cuda", arch=arch)
    target = info.target
    assert info.kind == "cuda" and info.caps.cuda_arch == arch
    assert str(target.attrs["arch"]) == arch
    assert target.host.kind.name == "llvm"


@pytest.mark.parametrize("arch", ["80", "sm80", "compute_80", "sm_8", "SM_80", "sm_80 "])
def test_bad_cuda_arch_is_refused_naming_the_accepted_form(arch):
    with pytest.raises(ValueError, match=r'"sm_XY".*"sm_80"'):
        make_target("cuda", arch=arch)


def test_cuda_arch_without_dp4a_is_refused():
    with pytest.raises(ValueError, match="dp4a"):
        make_target("cuda", arch="sm_52")


def test_cuda_without_arch_or_gpu_is_refused():
    if has_gpu():
        pytest.skip("a GPU is present: the arch comes from it")
    with pytest.raises(ValueError, match="no CUDA device"):
        make_target("cuda")


def test_llvm_target_has_host_cores_and_optional_mcpu():
    target = make_target("llvm", mcpu="cascadelake").target
    assert int(target.attrs["num-cores"]) >= 1
    assert str(target.attrs["mcpu"]) == "cascadelake"
    assert str(make_target("llvm").target.attrs["mcpu"]) == host_cpu()  # VNNI where it has it
    with pytest.raises(ValueError, match="does not know the CPU 'pentium9'"):
        make_target("llvm", mcpu="pentium9")


# ---- schedules --------------------------------------------------------------------------
def test_every_primfunc_is_gpu_scheduled(deit):
    scheduled = schedule_module(deit[1].mod, make_target("cuda", arch="sm_80").target)
    primfuncs = [gv for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(primfuncs) > 10
    assert unscheduled_functions(scheduled) == []


def test_unscheduled_primfunc_is_an_error_naming_it():
    a = te.placeholder((16,), "int32", name="a")
    func = te.create_prim_func([a, te.compute((16,), lambda i: a[i] + 1, name="b")])
    mod = tvm.IRModule({"plain_add": func.with_attr("global_symbol", "plain_add")})
    with pytest.raises(RuntimeError, match="plain_add"):
        require_gpu_schedule(mod)


def test_reduced_deit_builds_with_symbolic_batch(built, deit):
    _, executable, source = built
    assert deit[1].input_shape[0] == -1
    assert "__dp4a" in source
    assert "int64_t batch" in source  # one kernel set serves every batch size


# ---- nvcc -------------------------------------------------------------------------------
@needs_nvcc
def test_cuda_home_is_the_toolkit_behind_nvcc():
    home = find_cuda_home()
    assert (home / "include" / "cuda.h").is_file()
    assert (home / "bin" / "nvcc").is_file()


@needs_nvcc
def test_kernels_compile_to_cubin_with_nvcc(built):
    arch, _, source = built
    report = report_cubin(compile_kernels(source, arch, "cubin"), arch)
    defined = defined_kernels(source)
    assert sorted(report.kernels) == sorted(set(defined))


@needs_nvcc
def test_dense_kernels_use_tensor_cores_or_dp4a_in_ptx(built):
    """sm_80+: dense GEMMs on mma.sync s8 where a tile fits (the head's 10 classes: dp4a);
    dp4a on sm_61..sm_75 (tests/schedules/test_cuda_mma.py checks the choice per arch)."""
    arch, _, source = built
    ptx = compile_kernels(source, arch, "ptx").decode()
    dense = kernel_ptx(ptx, "ivit_dense")
    assert dense, "no dense kernel in the PTX"
    assert all("dp4a.s32.s32" in body or ".s8.s8.s32" in body for body in dense)
    assert any(re.search(r"mma\.sync\.aligned\.m16n8k32\.row\.col\.s32\.s8\.s8\.s32", body)
               for body in dense)


@pytest.fixture(scope="module")
def swin_source():
    """CUDA C of a reduced Swin (shifted windows, masked Shiftmax) for sm_80."""
    info = make_target("cuda", arch="sm_80")
    mod = apply_graph_passes(lower_model(quantized(SWIN), info)).mod
    return "sm_80", cuda_source(build_cuda(mod, info))


def assert_no_local_memory(arch: str, source: str) -> None:
    """Every kernel keeps its data in registers and shared memory: no local array in the PTX,
    no stack frame or spill in ptxas's report (the mma fragments are indexed by constants:
    schedules/cuda/device_indexing.py)."""
    _, ptx, log = compile_cubin_verbose(source, arch)
    local = {name: counts["local_memory"] for name, counts in kernel_instructions(ptx).items()
             if counts["local_memory"]}
    assert not local, (arch, local)
    resources = parse_ptxas_resources(log)
    assert resources
    heavy = {name: usage for name, usage in resources.items()
             if usage.stack_bytes or usage.spill_store_bytes or usage.spill_load_bytes}
    assert not heavy, (arch, heavy)


@needs_nvcc
def test_no_kernel_uses_local_memory(built):
    arch, _, source = built
    assert_no_local_memory(arch, source)


@needs_nvcc
def test_no_swin_kernel_uses_local_memory(swin_source):
    assert_no_local_memory(*swin_source)


@needs_nvcc
def test_attention_matmuls_use_tensor_cores_on_sm80_and_newer(built):
    """sm_80+: q @ k^T (fused with its requantize) on mma.sync .s8.s8; probs @ V with 16-bit
    probabilities as two GEMMs, the high byte on .s8.s8 and the low byte on .u8.s8."""
    arch, _, source = built
    ptx = compile_kernels(source, arch, "ptx").decode()
    attention = kernel_ptx(ptx, "batch_matmul")
    assert attention
    mma = "mma.sync.aligned.m16n8k32.row.col.s32"
    assert all(f"{mma}.s8.s8.s32" in body or f"{mma}.u8.s8.s32" in body
               for body in attention), arch
    assert sum(f"{mma}.u8.s8.s32" in body for body in attention) >= 1  # the low bytes
    assert not any("dp4a" in body for body in attention)


# ---- artifacts --------------------------------------------------------------------------
@needs_nvcc
@needs_cc
def test_backend_build_and_export_write_a_library_with_compiled_kernels(deit, tmp_path):
    info, backend = make_target("cuda", arch="sm_90"), get_backend("cuda")
    path = tmp_path / "deit.so"
    sentence = backend.export(backend.build(deit[1].mod, info), info, path)
    assert path.is_file() and path.stat().st_size > 0
    assert "fatbin (SASS sm_90 + PTX)" in sentence  # compiled kernels, not CUDA source
    assert ("driver stub" in sentence) != has_gpu()


def test_library_written_by_export_library_without_a_driver_does_not_load(deit, tmp_path):
    """Why the CUDA backend exports under a driver stub: TVM's own export keeps CUDA source
    nobody can load."""
    if has_gpu():
        pytest.skip("a driver is present: TVM embeds compiled kernels itself")
    path = tmp_path / "source_only.so"
    build_cuda(deit[1].mod, make_target("cuda", arch="sm_90")).export_library(str(path))
    with pytest.raises(Exception, match="cuda"):
        tvm.runtime.load_module(str(path))


# ---- on a GPU ---------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
def test_gpu_logits_equal_pytorch_integer_reference(deit, batch):
    if not has_gpu():
        pytest.skip("no CUDA device")
    model, result = deit
    device = tvm.cuda(0)
    executable = build_cuda(result.mod, make_target("cuda"))
    vm = tvm.relax.VirtualMachine(executable, device)
    images = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = model.forward_integer(images)[0].numpy()  # (B, classes) int32
    got = vm["main"](tvm.runtime.tensor(images.numpy(), device)).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, expected)
