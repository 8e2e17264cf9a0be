"""CUDA row kernels (schedules/cuda/rowwise.py): a warp per row with shuffle all-reduces, checked
without a GPU: the generated CUDA source and PTX, the proofs behind int32 reductions, and the
scheduled TIR run on the CPU (schedules/cuda/twin.py) against the PyTorch integer reference.

Kernels are built the way FuseTIR builds them: the op's TE definition (ivit_tvm.ops) with its
requantize epilogue in one PrimFunc, int64 shapes and a symbolic batch, as the frontend emits.
"""

from __future__ import annotations

import re
import shutil
import zlib
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
import tvm
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.cuda.build import device_modules
from ivit_tvm.schedules.cuda.inspect import report_ptx
from ivit_tvm.schedules.cuda.rowwise import (
    INT32_MAX,
    ROWS_PER_BLOCK,
    WARP,
    WARP_ROW_MAX,
    RowReduction,
    reduction_dtypes,
    row_layout,
    sum_bound,
)
from ivit_tvm.schedules.cuda.toolkit import compile_kernels
from ivit_tvm.schedules.cuda.twin import build_twin
from support import VOLATILE_TREE, concrete_shape, kernel_body, twin_and_reference
from tvm import te, tirx

from ivit_tvm.ops import int_layernorm, requantize, shiftgelu, shiftmax
from ivit_tvm.quant import functional as F

ARCH = "sm_80"
LENGTHS = [49, 197, 384, 1536]  # Swin window, DeiT tokens, DeiT-S channels, DeiT-S MLP hidden
BATCH = 3  # x 3 rows per batch item = 9 rows: not a multiple of ROWS_PER_BLOCK
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")


def i64(value: int) -> tirx.IntImm:
    return tirx.const(value, "int64")


# ---- the kernels ------------------------------------------------------------------------
@dataclass(frozen=True)
class Kernel:
    """A fused row kernel: its TE arguments (inputs then output) and the reference."""

    name: str
    length: int
    in_dtype: str
    scale: float = 0.05  # the input scale S of Shiftmax / ShiftGELU (x0 = floor(-1/S))

    @property
    def params(self) -> dict:
        x0 = F.exp_x0(self.scale) if self.name == "shiftmax" else F.gelu_x0(self.scale)
        return {**KERNEL_PARAMS[self.name], "x0": x0}

    def tensors(self, length=None) -> list[te.Tensor]:
        length = i64(self.length if length is None else length)
        batch = te.var("batch", "int64")
        q = te.placeholder((batch, i64(3), length), self.in_dtype, name="q")  # (B, 3, C)
        p = self.params
        if self.name == "shiftmax":
            return [q, shiftmax(q, p["x0"], p["bits"])]  # (B, 3, C) int16
        if self.name == "shiftgelu":
            out = requantize(shiftgelu(q, p["x0"]), p["multiplier"], p["shift"], 8)
            return [q, out]  # (B, 3, C) int8
        bias = te.placeholder((length,), "int32", name="bias_q")  # (C,)
        multiplier = te.placeholder((length,), "int64", name="multiplier")  # (C,)
        shift = te.placeholder((length,), "int64", name="shift")  # (C,)
        out = requantize(int_layernorm(q, bias), multiplier, shift, 8)
        return [q, bias, multiplier, shift, out]  # (B, 3, C) int8

    def prim_func(self, length=None) -> tirx.PrimFunc:
        return te.create_prim_func(self.tensors(length)).with_attr("global_symbol", "main")

    def inputs(self, q: np.ndarray) -> list[np.ndarray]:
        """q (B, 3, C) and the per-channel parameters for the kernel's other inputs."""
        if self.name != "layernorm":
            return [q]
        gen = np.random.default_rng(self.length)
        bias = gen.integers(-(2**20), 2**20, self.length).astype(np.int32)  # (C,)
        # per-channel ratios around 2**-24 (int32 layernorm output -> int8 codes)
        ratios = gen.uniform(0.3, 3.0, self.length) * 2.0**-24
        multiplier, shift = F.dyadic(ratios)  # (C,) int64 each
        return [q, bias, multiplier, shift]

    def reference(self, arrays: list[np.ndarray]) -> np.ndarray:
        """The PyTorch integer reference (ivit_tvm/quant/functional.py)."""
        q = torch.from_numpy(arrays[0])
        p = self.params
        if self.name == "shiftmax":
            return F.shiftmax(q, p["x0"], p["bits"]).numpy()
        if self.name == "shiftgelu":
            return F.requantize(F.shiftgelu(q, p["x0"]), p["multiplier"], p["shift"], 8).numpy()
        bias, multiplier, shift = (torch.from_numpy(a) for a in arrays[1:])
        return F.requantize(F.int_layernorm(q, bias), multiplier, shift, 8).numpy()

    def out_dtype(self) -> str:
        return "int16" if self.name == "shiftmax" else "int8"


KERNEL_PARAMS = {
    "shiftmax": {"bits": 16},  # DeiT: 16-bit probabilities
    "shiftgelu": {"multiplier": 1_518_500_250, "shift": 38},
    "layernorm": {},
}
KERNELS = [Kernel("shiftmax", n, "int8") for n in LENGTHS] + [
    Kernel("shiftgelu", n, "int8") for n in LENGTHS
] + [Kernel("layernorm", n, "int16") for n in LENGTHS] + [
    # a fine logit scale: shift_exp(0) = 2**27, so a row's sum saturates at 2**31 - 1
    Kernel("shiftmax", 197, "int8", scale=2.0**-12),
]


def kernel_id(kernel: Kernel) -> str:
    fine = "" if kernel.scale == Kernel.scale else f"-S{kernel.scale:g}"
    return f"{kernel.name}-{kernel.length}{fine}"


@cache
def scheduled(kernel: Kernel) -> tirx.PrimFunc:
    target = make_target("cuda", arch=ARCH).target
    sch = RowReduction().apply(kernel.prim_func(), target, False)
    assert sch is not None, f"RowReduction did not take the {kernel.name} kernel"
    return sch.mod["main"]


@cache
def cuda_source(kernel: Kernel) -> str:
    target = make_target("cuda", arch=ARCH).target
    executable = tvm.compile(tvm.IRModule({"main": scheduled(kernel)}), target=target)
    return "\n".join(module.inspect_source() for module in device_modules(executable, "cuda"))


# ---- layout -----------------------------------------------------------------------------
def test_short_rows_get_a_warp_each_and_long_rows_a_block():
    assert row_layout(i64(197)).warp_per_row and row_layout(i64(197)).lanes == WARP
    assert row_layout(i64(WARP_ROW_MAX)).warp_per_row
    assert not row_layout(i64(WARP_ROW_MAX + 1)).warp_per_row
    assert row_layout(i64(1536)).lanes == 256 and row_layout(i64(1536)).rows_per_block == 1
    assert not row_layout(te.var("n", "int64")).warp_per_row  # unknown length: a block


@pytest.mark.parametrize("kernel", KERNELS, ids=kernel_id)
def test_scheduled_kernel_binds_lanes_and_rows(kernel):
    script = scheduled(kernel).script()
    assert 'thread="threadIdx.x"' in script
    if kernel.length <= WARP_ROW_MAX:
        assert re.search(rf'thread_binding\(T\.int64\({ROWS_PER_BLOCK}\), thread="threadIdx.y"\)',
                         script)
        assert re.search(rf'thread_binding\(T\.int64\({WARP}\), thread="threadIdx.x"\)', script)
    else:
        assert "threadIdx.y" not in script


# ---- int32 reductions and their proofs --------------------------------------------------
def test_sum_bound_covers_every_partial_sum():
    assert sum_bound(-3, 5, 4) == (-12, 20)
    assert sum_bound(2, 5, 4) == (0, 20)  # the empty partial sum, 0
    assert sum_bound(-5, -2, 4) == (-20, 0)


@pytest.mark.parametrize("length", LENGTHS)
def test_reduction_dtypes_of_the_three_ops(length):
    """What the rule proves: int8 row maxes widen to int32 (shuffles move >= 32 bits), the
    I-LayerNorm row sum of 16-bit values narrows to int32 (length * 2**15 < 2**31); sums that
    it cannot bound stay int64."""
    dtypes = {name: reduction_dtypes(Kernel(name, length, dtype).prim_func())
              for name, dtype in (("shiftmax", "int8"), ("shiftgelu", "int8"),
                                  ("layernorm", "int16"))}
    assert dtypes["shiftmax"] == {"shiftmax_row_max": "int32"}  # row_sum: e up to 2**31 - 1
    assert dtypes["shiftgelu"] == {"shiftgelu_row_max": "int32"}
    assert dtypes["layernorm"] == {"layernorm_row_sum": "int32"}  # var: reads the mean


def test_layernorm_row_sum_stays_int64_exactly_where_int32_could_overflow():
    """The bound from docs/semantics.md: the residual stream is 16 bit, |q| <= 2**15, so a
    row sum of C values lies in [-C * 2**15, C * (2**15 - 1)]: int32 for C <= 2**16 only."""
    fits = Kernel("layernorm", 2**16, "int16").prim_func()
    overflows = Kernel("layernorm", 2**16 + 1, "int16").prim_func()
    assert -(2**16) * 2**15 >= -(2**31) and 2**16 * (2**15 - 1) <= INT32_MAX
    assert reduction_dtypes(fits) == {"layernorm_row_sum": "int32"}
    assert reduction_dtypes(overflows) == {}
    # int32 inputs: a single value can be 2**31 - 1, so no sum narrows
    assert reduction_dtypes(Kernel("layernorm", 197, "int32").prim_func()) == {}


def test_shiftmax_sum_of_exponentials_can_exceed_int32():
    """Why Shiftmax's row sum keeps int64: each exponential is up to 2**31 - 1 (a logit scale
    below 2**-16 gives shift_exp(0) = -x0 * 2**15 >= 2**31), so two already overflow int32."""
    x0 = F.exp_x0(2.0**-17)
    e_max = int(F.shift_exp(torch.tensor([0]), x0, 15)[0])
    assert e_max == INT32_MAX and 2 * e_max > INT32_MAX


@pytest.mark.parametrize("kernel", KERNELS, ids=kernel_id)
def test_int32_reductions_appear_in_the_scheduled_tir(kernel):
    script = scheduled(kernel).script()
    widened = reduction_dtypes(kernel.prim_func())
    assert widened
    for block in widened:
        allocs = [line for line in script.splitlines()
                  if re.match(rf"\s*{block}\w* = T\.sblock_alloc_buffer\(", line)]
        assert len(allocs) == 1 and '"int32"' in allocs[0], allocs


# ---- CUDA source and PTX ----------------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS, ids=kernel_id)
def test_cuda_source_reduces_with_warp_shuffles(kernel):
    body = kernel_body(cuda_source(kernel))
    assert "__shfl_down_sync" in body
    assert not VOLATILE_TREE.search(body), "a volatile shared-memory reduction tree"
    if kernel.length <= WARP_ROW_MAX:  # a warp per row: no shared memory, no barrier
        assert "__shared__" not in body and "__syncthreads" not in body
        assert f"__launch_bounds__({WARP * ROWS_PER_BLOCK})" in body


def test_old_volatile_tree_pattern_is_recognized():
    """The pattern the tests above refuse, as TVM emits it for an int8 all-reduce."""
    tree = "((volatile signed char*)red_buf0)[((int)threadIdx.x)] = x;"
    assert VOLATILE_TREE.search(tree)


@needs_nvcc
@pytest.mark.parametrize("kernel", [k for k in KERNELS if k.length in (197, 1536)],
                         ids=kernel_id)
def test_ptx_has_shuffles_and_no_local_memory(kernel):
    ptx = compile_kernels(cuda_source(kernel), ARCH, "ptx").decode()
    counts = report_ptx(ptx, ARCH).instructions
    assert counts["shfl"] >= 5  # log2(32) steps per all-reduce, at least one all-reduce
    assert counts["local_memory"] == 0


# ---- bit-exact on the CPU twin ----------------------------------------------------------
@cache
def twin(kernel: Kernel):
    return build_twin(scheduled(kernel))


def run_twin(kernel: Kernel, arrays: list[np.ndarray]) -> np.ndarray:
    out = np.zeros(arrays[0].shape, kernel.out_dtype())
    device = tvm.cpu(0)
    args = [tvm.runtime.tensor(a, device) for a in [*arrays, out]]
    twin(kernel)["twin"](*args)
    return args[-1].numpy()


def rows(kernel: Kernel, kind: str) -> np.ndarray:
    """(BATCH, 3, C) rows of q: random, or one of the extremes of the input dtype."""
    info = np.iinfo(kernel.in_dtype)
    shape = (BATCH, 3, kernel.length)
    gen = np.random.default_rng(zlib.crc32(f"{kernel_id(kernel)}-{kind}".encode()))
    if kind == "random":
        return gen.integers(info.min, info.max + 1, shape).astype(kernel.in_dtype)
    q = np.empty(shape, kernel.in_dtype)
    q[0, 0], q[0, 1], q[0, 2] = info.min, info.max, 0  # constant rows
    q[1] = np.where(np.arange(kernel.length) % 2, info.max, info.min)  # alternating: max var
    q[2] = info.min
    q[2, :, gen.integers(kernel.length)] = info.max  # one spike per row
    q[2, 2, -1] = info.max  # a spike in the last column (the ragged last lane group)
    return q


@pytest.mark.parametrize("kind", ["random", "extreme"])
@pytest.mark.parametrize("kernel", KERNELS, ids=kernel_id)
def test_twin_equals_pytorch_reference(kernel, kind):
    arrays = kernel.inputs(rows(kernel, kind))
    np.testing.assert_array_equal(run_twin(kernel, arrays), kernel.reference(arrays))


@pytest.mark.parametrize("kernel", [Kernel("layernorm", 197, "int16"),
                                    Kernel("shiftmax", 49, "int8")], ids=kernel_id)
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_twin_exact_for_row_counts_around_the_block(kernel, batch):
    """3, 6, 15 rows against 4 rows per block: partial last blocks, one block, several."""
    gen = np.random.default_rng(batch)
    info = np.iinfo(kernel.in_dtype)
    q = gen.integers(info.min, info.max + 1, (batch, 3, kernel.length)).astype(kernel.in_dtype)
    arrays = kernel.inputs(q)
    np.testing.assert_array_equal(run_twin(kernel, arrays), kernel.reference(arrays))


def test_twin_exact_for_swins_masked_window_shiftmax():
    """Swin's shifted windows: mask (nW, N, N) read as mask[w % nW], 8-bit probabilities."""
    windows, tokens, x0 = 4, 49, F.exp_x0(0.08)
    w = te.var("windows", "int64")
    q = te.placeholder((w, i64(2), i64(tokens), i64(tokens)), "int8", name="q")
    mask = te.placeholder((i64(windows), i64(tokens), i64(tokens)), "bool", name="mask")
    out = shiftmax(q, x0, 8, mask, window_mask=True)  # (W, 2, N, N) int8
    func = te.create_prim_func([q, mask, out]).with_attr("global_symbol", "main")
    sch = RowReduction().apply(func, make_target("cuda", arch=ARCH).target, False)
    assert sch is not None
    gen = np.random.default_rng(7)
    q_np = gen.integers(-128, 128, (2 * windows, 2, tokens, tokens)).astype(np.int8)
    mask_np = gen.random((windows, tokens, tokens)) < 0.3
    mask_np[0, 0] = True  # a fully masked row
    got = np.zeros(q_np.shape, np.int8)
    args = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in (q_np, mask_np, got)]
    build_twin(sch.mod["main"])["twin"](*args)
    full_mask = torch.from_numpy(mask_np[np.arange(2 * windows) % windows][:, None])
    expected = F.shiftmax(torch.from_numpy(q_np), x0, 8, full_mask).numpy()
    np.testing.assert_array_equal(args[-1].numpy(), expected)


# ---- the fused row kernels of real models -----------------------------------------------
ROW_FUNC = re.compile(r"\w*(layernorm|shiftmax|shiftgelu)\w*")


@pytest.fixture(scope="module", params=["deit", "swin"])
def model_row_kernels(request):
    """{name: scheduled PrimFunc} of every row kernel in a reduced DeiT / Swin (support.py)."""
    from ivit_tvm.schedules.cuda.pipeline import fusion_passes, schedule_module
    from support import DEIT, SWIN, quantized

    from ivit_tvm.frontend import from_model

    config = {"deit": DEIT, "swin": SWIN}[request.param]
    target = make_target("cuda", arch=ARCH).target
    mod = from_model(quantized(config)).mod
    found = RowKernels({gv.name_hint: func for gv, func in schedule_module(mod, target)
                        .functions_items()
                        if isinstance(func, tirx.PrimFunc) and ROW_FUNC.fullmatch(gv.name_hint)})
    with target:
        fused = tvm.transform.Sequential(fusion_passes())(mod)
    found.fused = {name: fused[name] for name in found}
    assert len(found) >= 3
    return found


class RowKernels(dict):
    """{name: scheduled PrimFunc}, with .fused: {name: the same PrimFunc before scheduling}."""

    fused: dict


def test_model_row_kernels_get_a_warp_per_row_and_shuffles(model_row_kernels):
    target = make_target("cuda", arch=ARCH).target
    for name, func in model_row_kernels.items():
        script = func.script()
        assert 'thread="threadIdx.y"' in script, f"{name} is not warp-per-row"
        executable = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                                 target=target)
        source = "\n".join(m.inspect_source() for m in device_modules(executable, "cuda"))
        body = kernel_body(source)
        assert "__shfl_down_sync" in body, name
        assert "__shared__" not in body and not VOLATILE_TREE.search(body), name


def _random_argument(buffer, batch: int, gen) -> np.ndarray:
    """Data tensors over their dtype's full range; (C,) parameters (multipliers, shifts,
    biases) in [1, 2**20], where no product can overflow int64."""
    shape, dtype = concrete_shape(buffer, batch), str(buffer.dtype)
    if dtype == "bool":
        return gen.random(shape) < 0.3
    if len(shape) == 1:
        return gen.integers(1, 2**20, shape).astype(dtype)
    info = np.iinfo(dtype)
    return gen.integers(info.min, info.max, shape, endpoint=True).astype(dtype)


def test_model_row_kernels_twin_equals_the_unscheduled_kernel(model_row_kernels):
    """Each scheduled fused row kernel of the model (with its fused requantize, slice and cast
    epilogues), run as the CPU twin, equals the same fused PrimFunc built unscheduled for the
    CPU, at a batch of 3 (rows not a multiple of the rows per block)."""
    fused, scheduled_funcs = model_row_kernels.fused, model_row_kernels
    gen = np.random.default_rng(3)
    for name, func in scheduled_funcs.items():
        plain = fused[name]
        buffers = [param.ty for param in plain.params]  # BufferType (shape, dtype)
        arrays = [_random_argument(b, 3, gen) for b in buffers[:-1]]
        results = twin_and_reference(plain, func, arrays, 3)
        np.testing.assert_array_equal(results[1], results[0], err_msg=name)
