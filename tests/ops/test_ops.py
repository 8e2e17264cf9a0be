"""The TE operators in ivit_tvm.ops, compiled for llvm, equal functional.py bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from tvm import relax, te

from ivit_tvm import ops
from ivit_tvm.quant import functional as F

TARGET = tvm.target.Target({"kind": "llvm"})
INT_RANGE = {dtype: (np.iinfo(dtype).min, np.iinfo(dtype).max)
             for dtype in ("int8", "int16", "int32")}
SCALES = [1e-9, 1e-4, 1e-3, 0.02, 0.3, 2.0]  # input scales that set x0 (1e-9: too small for int32)
RATIOS = [1e-5, 3.7e-4, 0.0123, 0.5, 1.0, 1.999]  # requantization ratios S_in / S_out
TOKENS = [(3, 197), (5, 49), (2, 8)]  # (rows, last axis): DeiT, Swin windows, tiny

_COMPILED: dict = {}


def symbolic(*names: str) -> tuple:
    """int64 shape variables, so that one compiled kernel serves every shape."""
    return tuple(te.var(name, "int64") for name in names)


def compiled(key, build):
    """Compile `build() -> (inputs, output)` once per key; return (kernel, output dtype)."""
    if key not in _COMPILED:
        inputs, output = build()
        func = te.create_prim_func([*inputs, output])
        _COMPILED[key] = tvm.compile(func, target=TARGET)["main"], str(output.dtype)
    return _COMPILED[key]


def run(key, build, out_shape, *arrays: np.ndarray) -> np.ndarray:
    kernel, dtype = compiled(key, build)
    out = tvm.runtime.tensor(np.zeros(out_shape, dtype))
    kernel(*(tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays), out)
    return out.numpy()


def reference(fn, *arrays, **kwargs) -> np.ndarray:
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
               for a in arrays]
    return fn(*tensors, **kwargs).numpy()


def random_ints(rng, shape, dtype, low=None, high=None) -> np.ndarray:
    info_low, info_high = INT_RANGE[dtype]
    low = info_low if low is None else low
    high = info_high if high is None else high
    return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)


def extreme_rows(dtype: str, length: int) -> dict[str, np.ndarray]:
    """Rows that stress the integer paths: ties, saturation, one-hot, alternating extremes."""
    low, high = INT_RANGE[dtype]
    one_hot = np.full(length, low, dtype)
    one_hot[length // 3] = high
    alternating = np.where(np.arange(length) % 2 == 0, low, high).astype(dtype)
    return {
        "all_zero": np.zeros((2, length), dtype),
        "all_min": np.full((2, length), low, dtype),
        "all_max": np.full((2, length), high, dtype),
        "one_hot": np.stack([one_hot, one_hot[::-1]]),
        "alternating": np.stack([alternating, alternating[::-1]]),
        "ramp": np.linspace(low, high, 2 * length).astype(dtype).reshape(2, length),
    }


# ---- helpers: rshift_round, shift_exp ------------------------------------------------------


def test_rshift_round_rounds_half_to_even_for_every_shift():
    rng = np.random.default_rng(0)
    shift = np.repeat(np.arange(1, 63), 40)  # every legal shift
    odd = rng.integers(-(2**20), 2**20, size=shift.size) * 2 + 1
    halves = odd * 2 ** (shift - 1)  # exactly x.5 after the shift: ties
    x = np.where(shift <= 41, halves, rng.integers(-(2**61), 2**61, size=shift.size))

    def build():
        (n,) = symbolic("n")
        x_t = te.placeholder((n,), "int64", name="x")
        shift_t = te.placeholder((n,), "int64", name="shift")
        out = te.compute((n,), lambda i: ops.rshift_round(x_t[i], shift_t[i]), name="out")
        return [x_t, shift_t], out

    got = run("rshift_round", build, x.shape, x, shift)
    np.testing.assert_array_equal(got, reference(F.rshift_round, x, shift))


def test_rshift_round_rejects_constant_shift_outside_dyadic_range():
    with pytest.raises(ValueError, match="shift"):
        ops.rshift_round(tvm.tirx.const(5, "int64"), 63)


@pytest.mark.parametrize("n", [F.SHIFTMAX_N, F.SHIFTGELU_N])
@pytest.mark.parametrize("scale", SCALES)
def test_shift_exp_matches_reference_on_negative_and_positive_inputs(scale, n):
    x0 = F.exp_x0(scale)
    rng = np.random.default_rng(n)
    x = np.concatenate([
        np.arange(-4000, 4000),  # every small value, both signs (positive: ShiftGELU's -max)
        rng.integers(-(2**33), 2**32, size=4000),  # int32 differences and beyond
        [n * x0, n * x0 - 1, n * x0 + 1, -(2**33), 2**32 - 1],  # the clamp and the ends
    ]).astype(np.int64)

    def build():
        (length,) = symbolic("n")
        x_t = te.placeholder((length,), "int64", name="x")
        out = te.compute((length,), lambda i: ops.shift_exp(x_t[i], x0, n), name="out")
        return [x_t], out

    got = run(("shift_exp", x0, n), build, x.shape, x)
    np.testing.assert_array_equal(got, reference(F.shift_exp, x, x0, n))


# ---- shift_exp in int32: the bounds that make narrowing exact (ops/integer.py) ---------------


def _x_log2(x: np.ndarray) -> np.ndarray:
    return x + (x >> 1) - (x >> 4)  # numpy's >> on int64 floors, as the reference's shifts


def test_x_log2_is_nondecreasing_and_below_its_clamp():
    """Clamping x at n*x0 before x + x>>1 - x>>4 (exp_operand32) equals clamping after it."""
    x = np.arange(-(2**24), 1, dtype=np.int64)
    assert (np.diff(_x_log2(x)) >= 0).all()
    for n in (F.SHIFTMAX_N, F.SHIFTGELU_N):
        for x0 in (-1, -2, -7, -5876, -(INT_RANGE["int32"][1] // (2 * n))):
            c = n * x0
            assert _x_log2(np.array([c]))[0] <= c


def _largest_int32_x0(n: int) -> int:
    """The most negative x0 that ops.integer.exp_fits_int32 accepts."""
    return -(INT_RANGE["int32"][1] // (2 * n))


@pytest.mark.parametrize("n", [F.SHIFTMAX_N, F.SHIFTGELU_N])
def test_exp_fits_int32_boundary(n):
    x0 = _largest_int32_x0(n)
    assert ops.integer.exp_fits_int32(x0, n)
    assert not ops.integer.exp_fits_int32(x0 - 1, n)
    with pytest.raises(ValueError, match="exceeds int32"):
        ops.integer.shift_exp32(tvm.tirx.const(0, "int32"), x0 - 1, n)


@pytest.mark.parametrize("n", [F.SHIFTMAX_N, F.SHIFTGELU_N])
@pytest.mark.parametrize("x0", [-1, -2, -3, -17, -100, -5876, "largest"])
def test_shift_exp32_equals_shift_exp(n, x0):
    """int32 shift_exp of max(q - m, n*x0) == the int64 reference of q - m, for every x down
    to twice the clamp when that range is small, else on its boundaries and at random."""
    x0 = _largest_int32_x0(n) if x0 == "largest" else x0
    low = 2 * n * x0
    rng = np.random.default_rng(-x0)
    if -low <= 2**20:
        x = np.arange(low, 1)
    else:
        edges = np.concatenate([k * x0 + np.arange(-3, 4) for k in range(2 * n + 1)])
        x = np.concatenate([edges, rng.integers(low, 1, 200_000), np.arange(-5000, 1)])
    x = np.clip(x, low, 0).astype(np.int32)  # (L,) int32: q - m, int32 differences

    def build():
        (length,) = symbolic("n")
        x_t = te.placeholder((length,), "int32", name="x")
        zero = tvm.tirx.const(0, "int32")
        out = te.compute(
            (length,),
            lambda i: ops.integer.shift_exp32(
                ops.integer.exp_operand32(x_t[i], zero, x0, n), x0, n),
            name="out",
        )
        return [x_t], out

    got = run(("shift_exp32", x0, n), build, x.shape, x)
    np.testing.assert_array_equal(got, reference(F.shift_exp, x.astype(np.int64), x0, n))


def test_add_saturate32_at_the_ends():
    high = INT_RANGE["int32"][1]
    a = np.array([0, 1, high, high, high - 5, 2**30, 7], np.int32)
    b = np.array([0, high, 1, high, 5, 2**30, 8], np.int32)

    def build():
        (length,) = symbolic("n")
        a_t = te.placeholder((length,), "int32", name="a")
        b_t = te.placeholder((length,), "int32", name="b")
        out = te.compute((length,), lambda i: ops.integer.add_saturate32(a_t[i], b_t[i]))
        return [a_t, b_t], out

    got = run("add_saturate32", build, a.shape, a, b)
    np.testing.assert_array_equal(got, np.minimum(a.astype(np.int64) + b, high))


def _block_dtypes(func, name: str) -> set[str]:
    """The dtypes of the arithmetic in block `name`'s stored value (loads and their int64
    indices left out: a load counts as a constant of its dtype)."""
    import tvm_ffi
    from tvm.ir.expr import TensorLoad

    from ivit_tvm.ops.tir_query import blocks

    value = next(b for b in blocks(func) if b.name_hint == name).body.value
    value = tvm_ffi.structural_mutate(
        value, [(TensorLoad, lambda load, _m: tvm.tirx.const(0, str(load.ty)))])
    found: set[str] = set()
    tvm_ffi.structural_walk(value, (tvm.ir.expr.Expr, lambda e: found.add(str(e.ty))))
    return found


def _emitted(fn, *args) -> tvm.tirx.PrimFunc:
    """fn's PrimFunc as the frontend emits it: Relax's emit_te over a symbolic int64 batch,
    which normalizes index dtypes (int32 in a condition would come back as int64)."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", relax.TensorType((tvm.tirx.Var("batch", "int64"), 197), "int8"))
    with bb.function("main", [q]):
        bb.emit_func_output(bb.emit_te(fn, q, *args, primfunc_name_hint="kernel"))
    return bb.get()["kernel"]


@pytest.mark.parametrize("scale, narrow", [(0.02, True), (1e-4, True), (1e-9, False)])
def test_shiftgelu_and_shiftmax_narrow_to_int32_when_x0_allows(scale, narrow):
    """Per-element arithmetic is int32 unless exp_fits_int32 fails (then int64, still exact)."""
    gelu = _emitted(ops.shiftgelu, F.gelu_x0(scale))
    softmax = _emitted(ops.shiftmax, F.exp_x0(scale), 16)
    assert ("int64" not in _block_dtypes(gelu, "shiftgelu")) == narrow
    assert ("int64" not in _block_dtypes(softmax, "shiftmax")) == narrow
    wide = _emitted(lambda q, x0: ops.shiftgelu(q, x0, narrow=False), F.gelu_x0(scale))
    assert "int64" in _block_dtypes(wide, "shiftgelu")


# ---- requantize ------------------------------------------------------------------------------


def build_requantize_per_tensor(dtype, multiplier, shift, bits):
    def build():
        rows, channels = symbolic("rows", "channels")
        q = te.placeholder((rows, channels), dtype, name="q")
        return [q], ops.requantize(q, multiplier, shift, bits)

    return build


def build_requantize_per_channel(dtype, bits):
    def build():
        rows, channels = symbolic("rows", "channels")
        q = te.placeholder((rows, channels), dtype, name="q")
        multiplier = te.placeholder((channels,), "int64", name="multiplier")
        shift = te.placeholder((channels,), "int64", name="shift")
        return [q, multiplier, shift], ops.requantize(q, multiplier, shift, bits)

    return build


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("ratio", RATIOS)
def test_requantize_per_tensor_matches_reference_on_full_int32_range(ratio, bits):
    multiplier, shift = (int(v[0]) for v in F.dyadic(ratio))
    rng = np.random.default_rng(bits)
    q = np.concatenate([
        random_ints(rng, (4, 197), "int32"),
        np.stack(list(extreme_rows("int32", 197).values())).reshape(-1, 197),
    ])
    key = ("requantize", "int32", multiplier, shift, bits)
    got = run(key, build_requantize_per_tensor("int32", multiplier, shift, bits), q.shape, q)
    want = reference(F.requantize, q, multiplier, shift, bits)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_requantize_per_channel_matches_reference(seed, bits, dtype):
    rng = np.random.default_rng(seed)
    channels = [49, 197, 384][seed]
    ratios = np.exp(rng.uniform(np.log(1e-5), np.log(2.0), size=channels))
    ratios[:4] = [1e-5, 2.0, 1.0, 0.5]  # the range's ends and exact powers of two
    multiplier, shift = F.dyadic(ratios)
    q = np.concatenate([random_ints(rng, (5, channels), dtype),
                        *extreme_rows(dtype, channels).values()])
    got = run(("requantize_pc", dtype, bits), build_requantize_per_channel(dtype, bits),
              q.shape, q, multiplier, shift)
    want = reference(F.requantize, q, torch.from_numpy(multiplier), torch.from_numpy(shift),
                     bits)
    np.testing.assert_array_equal(got, want)
    if dtype == "int32":  # large ratios on int32 inputs must hit both saturation bounds
        low, high = F.qrange(bits)
        assert (got == low).any() and (got == high).any()


def test_requantize_clamps_runtime_shift_into_dyadic_range():
    q = np.array([[2**30, -(2**30) - 1, 12345, -7]], np.int32)
    multiplier = np.full(4, 3, np.int64)
    got = run(("requantize_pc", "int32", 32), build_requantize_per_channel("int32", 32),
              q.shape, q, multiplier, np.array([0, -5, 63, 200], np.int64))
    want = reference(F.requantize, q, torch.from_numpy(multiplier),
                     torch.tensor([1, 1, 62, 62]), 32)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bits", [8, 16, 32])
@pytest.mark.parametrize("seed", [0, 1])
def test_requantize_add_matches_reference_per_tensor_and_per_channel(seed, bits):
    rng = np.random.default_rng(seed)
    rows, channels = 197, 96
    multiplier_a, shift_a = (int(v[0]) for v in F.dyadic(RATIOS[seed + 3]))
    multiplier_b, shift_b = F.dyadic(np.exp(rng.uniform(np.log(1e-3), np.log(2.0), channels)))
    q_a = np.concatenate([random_ints(rng, (rows, channels), "int32"),
                          *extreme_rows("int32", channels).values()])
    q_b = np.concatenate([random_ints(rng, (rows, channels), "int8"),
                          *extreme_rows("int8", channels).values()])

    def build():
        n, c = symbolic("rows", "channels")
        a = te.placeholder((n, c), "int32", name="q_a")
        b = te.placeholder((n, c), "int8", name="q_b")
        m_b = te.placeholder((c,), "int64", name="multiplier_b")
        s_b = te.placeholder((c,), "int64", name="shift_b")
        out = ops.requantize_add(a, multiplier_a, shift_a, b, m_b, s_b, bits)
        return [a, b, m_b, s_b], out

    got = run(("requantize_add", multiplier_a, shift_a, bits), build, q_a.shape,
              q_a, q_b, multiplier_b, shift_b)
    want = reference(F.requantize_add, q_a, multiplier_a, shift_a, q_b,
                     torch.from_numpy(multiplier_b), torch.from_numpy(shift_b), bits)
    np.testing.assert_array_equal(got, want)


def test_requantize_rejects_float_input_and_mismatched_channel_tensor():
    q = te.placeholder((4, 8), "float32", name="q")
    with pytest.raises(TypeError, match="float32"):
        ops.requantize(q, 3, 4, 8)
    q = te.placeholder((4, 8), "int32", name="q")
    with pytest.raises(ValueError, match="length"):
        ops.requantize(q, te.placeholder((7,), "int64"), 4, 8)


# ---- shiftmax --------------------------------------------------------------------------------


def build_shiftmax(dtype, x0, out_bits, narrow=True):
    def build():
        rows, length = symbolic("rows", "n")
        q = te.placeholder((rows, length), dtype, name="q")
        return [q], ops.shiftmax(q, x0, out_bits, narrow=narrow)

    return build


def check_shiftmax(q: np.ndarray, scale: float, out_bits: int, narrow: bool = True):
    x0 = F.exp_x0(scale)
    key = ("shiftmax", str(q.dtype), x0, out_bits, narrow)
    got = run(key, build_shiftmax(str(q.dtype), x0, out_bits, narrow), q.shape, q)
    want = reference(F.shiftmax, q, x0, out_bits)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype
    return got


@pytest.mark.parametrize("out_bits", [8, 16])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
@pytest.mark.parametrize("shape", TOKENS)
def test_shiftmax_matches_reference_on_random_logits(shape, dtype, scale, out_bits):
    rng = np.random.default_rng(shape[1])
    bound = 2**20 if dtype == "int32" else None  # attention accumulators at realistic size
    q = random_ints(rng, shape, dtype, None if bound is None else -bound, bound)
    got = check_shiftmax(q, scale, out_bits)
    assert got.any(), "the case must produce nonzero probabilities"


@pytest.mark.parametrize("out_bits", [8, 16])
@pytest.mark.parametrize("scale", [1e-4, 0.02, 2.0])
@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
def test_shiftmax_matches_reference_on_extreme_rows(dtype, scale, out_bits):
    rows = extreme_rows(dtype, 197)
    check_shiftmax(np.concatenate(list(rows.values())), scale, out_bits)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", ["int8", "int32"])
def test_int64_formulation_matches_reference(dtype, scale):
    """narrow=False (what targets with 64-bit vector multiplies compile): still exact."""
    rng = np.random.default_rng(7)
    bound = 2**20 if dtype == "int32" else None
    q = random_ints(rng, (4, 197), dtype, None if bound is None else -bound, bound)
    extremes = np.concatenate(list(extreme_rows(dtype, 197).values()))
    for rows in (q, extremes):
        check_shiftmax(rows, scale, 16, narrow=False)
        check_shiftgelu(rows, scale, narrow=False)


def _exp_table(x0: int) -> np.ndarray:
    """(256,) int32: entry i = functional.shift_exp(i - 255), what the frontend passes."""
    from ivit_tvm.quant.fast import exp_table

    return exp_table(x0, F.SHIFTMAX_N, 255).numpy()


@pytest.mark.parametrize("out_bits", [8, 16])
@pytest.mark.parametrize("scale", SCALES)
def test_shiftmax_from_exp_table_matches_reference(scale, out_bits):
    x0 = F.exp_x0(scale)
    rng = np.random.default_rng(5)
    q = np.concatenate([random_ints(rng, (6, 197), "int8"),
                        np.concatenate(list(extreme_rows("int8", 197).values()))])

    def build():
        rows, length = symbolic("rows", "n")
        q_t = te.placeholder((rows, length), "int8", name="q")
        table_t = te.placeholder((256,), "int32", name="table")
        return [q_t, table_t], ops.shiftmax(q_t, x0, out_bits, exp_table=table_t)

    got = run(("shiftmax_table", x0, out_bits), build, q.shape, q, _exp_table(x0))
    np.testing.assert_array_equal(got, reference(F.shiftmax, q, x0, out_bits))


def test_shiftmax_from_exp_table_with_window_mask_matches_reference():
    x0 = F.exp_x0(0.05)
    rng = np.random.default_rng(8)
    q = random_ints(rng, (2, 4, 3, 49, 49), "int8")  # (B, nW, heads, N, N)
    mask = rng.random((4, 49, 49)) < 0.4
    mask[0, 0, :] = True  # a fully masked row
    q_flat = q.reshape(8, 3, 49, 49)

    def build():
        q_t = te.placeholder((8, 3, 49, 49), "int8", name="q")
        mask_t = te.placeholder((4, 49, 49), "bool", name="mask")
        table_t = te.placeholder((256,), "int32", name="table")
        out = ops.shiftmax(q_t, x0, 16, mask=mask_t, window_mask=True, exp_table=table_t)
        return [q_t, mask_t, table_t], out

    got = run("shiftmax_table_window_mask", build, q_flat.shape, q_flat, mask, _exp_table(x0))
    want = reference(F.shiftmax, q, x0, 16, mask=torch.from_numpy(mask[None, :, None]))
    np.testing.assert_array_equal(got, want.reshape(q_flat.shape))


def test_shiftmax_exp_table_needs_int8_logits():
    table = te.placeholder((256,), "int32", name="table")
    with pytest.raises(ValueError, match="exp_table"):
        ops.shiftmax(te.placeholder((4, 8), "int16"), -50, 16, exp_table=table)


def test_shiftmax_of_equal_logits_is_uniform():
    got = check_shiftmax(np.full((2, 49), 17, np.int8), 0.02, 16)
    assert (got == got[0, 0]).all() and got[0, 0] > 0


@pytest.mark.parametrize("mask_dtype", ["bool", "int8"])
def test_shiftmax_broadcast_mask_matches_reference(mask_dtype):
    rng = np.random.default_rng(7)
    batch, windows, heads, tokens = 2, 4, 3, 49
    x0 = F.exp_x0(0.01)
    q = random_ints(rng, (batch, windows, heads, tokens, tokens), "int32", -3000, 3000)
    mask = rng.random((windows, 1, tokens, tokens)) < 0.3
    mask[0, 0, 5] = True  # a fully masked row
    mask = mask.astype(mask_dtype)

    def build():
        q_t = te.placeholder(q.shape, "int32", name="q")
        mask_t = te.placeholder(mask.shape, mask_dtype, name="mask")
        return [q_t, mask_t], ops.shiftmax(q_t, x0, 8, mask=mask_t)

    got = run(("shiftmax_mask", mask_dtype), build, q.shape, q, mask)
    want = reference(F.shiftmax, q, x0, 8, mask=torch.from_numpy(mask).bool())
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want, reference(F.shiftmax, q, x0, 8)), "the mask must matter"


def test_shiftmax_window_mask_reads_window_modulo_nw():
    rng = np.random.default_rng(8)
    batch, windows, heads, tokens = 3, 4, 2, 16
    x0 = F.exp_x0(0.05)
    q = random_ints(rng, (batch * windows, heads, tokens, tokens), "int16", -500, 500)
    mask = (rng.random((windows, tokens, tokens)) < 0.4).astype(np.int8)

    def build():
        (n_windows,) = symbolic("batch_windows")
        q_t = te.placeholder((n_windows, heads, tokens, tokens), "int16", name="q")
        mask_t = te.placeholder(mask.shape, "int8", name="mask")
        return [q_t, mask_t], ops.shiftmax(q_t, x0, 16, mask=mask_t, window_mask=True)

    got = run("shiftmax_window_mask", build, q.shape, q, mask)
    q_5d = q.reshape(batch, windows, heads, tokens, tokens)
    mask_5d = torch.from_numpy(mask).bool()[:, None]  # (nW, 1, N, N)
    want = reference(F.shiftmax, q_5d, x0, 16, mask=mask_5d).reshape(q.shape)
    np.testing.assert_array_equal(got, want)


def test_shiftmax_rejects_mask_that_does_not_broadcast():
    q = te.placeholder((8, 3, 49, 49), "int32", name="q")
    with pytest.raises(ValueError, match="broadcast"):
        ops.shiftmax(q, -50, 8, mask=te.placeholder((4, 49, 49), "bool", name="mask"))
    with pytest.raises(ValueError, match="multiple"):
        ops.shiftmax(q, -50, 8, mask=te.placeholder((3, 49, 49), "bool"), window_mask=True)


# ---- shiftgelu -------------------------------------------------------------------------------


def check_shiftgelu(q: np.ndarray, scale: float, narrow: bool = True) -> np.ndarray:
    x0 = F.gelu_x0(scale)

    def build():
        rows, channels = symbolic("rows", "channels")
        q_t = te.placeholder((rows, channels), str(q.dtype), name="q")
        return [q_t], ops.shiftgelu(q_t, x0, narrow=narrow)

    got = run(("shiftgelu", str(q.dtype), x0, narrow), build, q.shape, q)
    want = reference(F.shiftgelu, q, x0)
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
@pytest.mark.parametrize("shape", [(3, 197), (4, 1536), (5, 49)])
def test_shiftgelu_matches_reference_on_random_inputs(shape, dtype, scale):
    rng = np.random.default_rng(shape[1])
    bound = 2**20 if dtype == "int32" else None
    q = random_ints(rng, shape, dtype, None if bound is None else -bound, bound)
    assert check_shiftgelu(q, scale).any()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
def test_shiftgelu_matches_reference_on_extreme_rows(dtype, scale):
    rows = extreme_rows(dtype, 197)
    check_shiftgelu(np.concatenate(list(rows.values())), scale)


@pytest.mark.parametrize("table_dtype", ["int8", "int16"])
def test_shiftgelu_lookup_reads_the_row_max_and_value_entry(table_dtype):
    rng = np.random.default_rng(11)
    q = np.concatenate([random_ints(rng, (5, 64), "int8"),
                        np.concatenate(list(extreme_rows("int8", 64).values()))])
    table = random_ints(rng, (256, 256), table_dtype)

    def build():
        rows, channels = symbolic("rows", "channels")
        q_t = te.placeholder((rows, channels), "int8", name="q")
        table_t = te.placeholder((256, 256), table_dtype, name="table")
        return [q_t, table_t], ops.shiftgelu_lookup(q_t, table_t)

    got = run(("shiftgelu_lookup", table_dtype), build, q.shape, q, table)
    want = table[q.max(axis=-1, keepdims=True).astype(int) + 128, q.astype(int) + 128]
    np.testing.assert_array_equal(got, want)


def test_shiftgelu_lookup_rejects_wider_inputs():
    with pytest.raises(ValueError, match="int8 q"):
        ops.shiftgelu_lookup(te.placeholder((4, 8), "int16"), te.placeholder((256, 256), "int8"))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("bits", [8, 16])
def test_gelu_requantize_table_equals_shiftgelu_then_requantize(scale, bits):
    """The frontend's (row max, value) table == functional.shiftgelu + requantize on rows."""
    from ivit_tvm.frontend.graph import gelu_requantize_table

    x0 = F.gelu_x0(scale)
    multiplier, shift = 1234567, 31
    table = gelu_requantize_table(x0, multiplier, shift, bits)
    rng = np.random.default_rng(3)
    q = np.concatenate([random_ints(rng, (64, 96), "int8"),
                        np.concatenate(list(extreme_rows("int8", 96).values())),
                        random_ints(rng, (16, 96), "int8", -128, -100)])  # low row maxima
    want = reference(lambda t: F.requantize(F.shiftgelu(t, x0), multiplier, shift, bits), q)
    got = table[q.max(axis=-1, keepdims=True).astype(int) + 128, q.astype(int) + 128]
    np.testing.assert_array_equal(got, want)
    assert table.dtype == want.dtype


def test_shiftgelu_keeps_sign_and_zeroes_large_negatives():
    q = np.array([[-127, -64, -1, 0, 1, 64, 127]], np.int8)
    got = check_shiftgelu(q, 0.05)  # x from -6.35 to 6.35
    assert got[0, 3] == 0 and (got[0, 4:] > 0).all() and (got[0, :3] <= 0).all()
    assert got[0, 0] > -128 * 0.05 * 2**7  # GELU(-6.35) ~ 0


# ---- int_layernorm ---------------------------------------------------------------------------


def check_layernorm(q: np.ndarray, bias_q: np.ndarray) -> np.ndarray:
    def build():
        rows, channels = symbolic("rows", "channels")
        q_t = te.placeholder((rows, channels), str(q.dtype), name="q")
        bias_t = te.placeholder((channels,), str(bias_q.dtype), name="bias_q")
        return [q_t, bias_t], ops.int_layernorm(q_t, bias_t)

    got = run(("layernorm", str(q.dtype), str(bias_q.dtype)), build, q.shape, q, bias_q)
    want = reference(F.int_layernorm, q, torch.from_numpy(bias_q))
    np.testing.assert_array_equal(got, want)
    return got


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
@pytest.mark.parametrize("channels", [49, 192, 384, 768])
def test_int_layernorm_matches_reference_on_random_inputs(channels, dtype):
    rng = np.random.default_rng(channels)
    bound = 2**20 if dtype == "int32" else None  # var = sum(y*y) stays inside int64
    q = random_ints(rng, (6, channels), dtype, None if bound is None else -bound, bound)
    bias_q = random_ints(rng, (channels,), "int32", -(2**28), 2**28)
    check_layernorm(q, bias_q)


@pytest.mark.parametrize("bias_dtype", ["int32", "int64"])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_int_layernorm_matches_reference_on_extreme_rows_and_saturating_bias(dtype, bias_dtype):
    channels = 197
    q = np.concatenate(list(extreme_rows(dtype, channels).values()))
    bias_q = np.zeros(channels, bias_dtype)
    bias_q[:60] = F.INT32_MAX  # pushes positive outputs past int32: must saturate
    bias_q[60:120] = F.INT32_MIN
    got = check_layernorm(q, bias_q)
    assert (got == F.INT32_MAX).any() and (got == F.INT32_MIN).any()


def test_int_layernorm_rounds_mean_half_to_even():
    channels = 48
    halves = np.zeros((4, channels), np.int8)  # row sums 24, 72, -24, -72: means x.5
    halves[0, :24] = 1
    halves[1, :24] = 3
    halves[2, :24] = -1
    halves[3, :24] = -3
    halves[:, -1] = np.array([5, 7, -5, -7])  # break the symmetry of the rows...
    halves[:, -2] = -halves[:, -1]  # ...without moving their sums
    got = check_layernorm(halves, np.zeros(channels, np.int32))
    assert len(np.unique(got[0])) > 2


def test_int_layernorm_of_constant_row_is_its_bias():
    bias_q = np.arange(-24, 24, dtype=np.int32) * 1000
    got = check_layernorm(np.full((2, 48), -77, np.int16), bias_q)
    np.testing.assert_array_equal(got, np.broadcast_to(bias_q, got.shape))


# ---- integer GEMMs ---------------------------------------------------------------------------


def build_dense(with_bias: bool):
    def build():
        rows, out_features, reduce = symbolic("rows", "n", "k")
        x = te.placeholder((rows, reduce), "int8", name="q_x")
        weight = te.placeholder((out_features, reduce), "int8", name="weight_q")
        if not with_bias:
            return [x, weight], ops.integer_dense(x, weight)
        bias = te.placeholder((out_features,), "int32", name="bias_q")
        return [x, weight, bias], ops.integer_dense(x, weight, bias)

    return build


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("shape", [(197, 384, 96), (49, 96, 288), (3, 1536, 16)])
def test_integer_dense_matches_reference(shape, with_bias):
    rows, reduce, out_features = shape
    rng = np.random.default_rng(reduce)
    q_x = random_ints(rng, (rows, reduce), "int8")
    weight_q = random_ints(rng, (out_features, reduce), "int8")
    q_x[0], weight_q[0] = -128, -128  # largest product sum: 2**14 * K
    bias_q = random_ints(rng, (out_features,), "int32", -(2**24), 2**24)
    arrays = (q_x, weight_q, bias_q) if with_bias else (q_x, weight_q)
    got = run(("dense", with_bias), build_dense(with_bias), (rows, out_features), *arrays)
    want = reference(F.integer_linear, q_x, weight_q,
                     torch.from_numpy(bias_q) if with_bias else None)
    np.testing.assert_array_equal(got, want)


def test_integer_dense_bias_saturates_like_reference():
    q_x = np.full((2, 1024), -128, np.int8)
    weight_q = np.full((4, 1024), -128, np.int8)  # acc = 2**24 per output
    bias_q = np.array([F.INT32_MAX, F.INT32_MAX - 2**23, F.INT32_MIN, 0], np.int32)
    got = run(("dense", True), build_dense(True), (2, 4), q_x, weight_q, bias_q)
    want = reference(F.integer_linear, q_x, weight_q, torch.from_numpy(bias_q))
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] == F.INT32_MAX


def build_batch_matmul(a_dtype: str, reduce_is_tokens: bool, transpose_b: bool, depth=64):
    """Attention's (B, H, N, K) x (B, H, K, M): probs @ v (K = N, M = d) or q @ k^T (K = d,
    M = N), with symbolic B and N."""
    def build():
        batch, tokens = symbolic("batch", "tokens")
        reduce, cols = (tokens, depth) if reduce_is_tokens else (depth, tokens)
        a = te.placeholder((batch, 3, tokens, reduce), a_dtype, name="q_a")
        b_dims = (cols, reduce) if transpose_b else (reduce, cols)
        b = te.placeholder((batch, 3, *b_dims), "int8", name="q_b")
        return [a, b], ops.integer_batch_matmul(a, b, transpose_b=transpose_b)

    return build


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("tokens", [197, 49])
def test_integer_batch_matmul_of_int8_queries_and_keys_matches_reference(tokens, transpose_b):
    rng = np.random.default_rng(tokens)
    q = random_ints(rng, (2, 3, tokens, 64), "int8")
    k = random_ints(rng, (2, 3, tokens, 64), "int8")  # (B, H, N, d)
    q[0, 0, 0], k[0, 0, :] = -128, -128  # the largest sum: 2**14 * d
    k_operand = k if transpose_b else np.swapaxes(k, -1, -2)
    got = run(("bmm", "int8", transpose_b), build_batch_matmul("int8", False, transpose_b),
              (2, 3, tokens, tokens), q, k_operand)
    want = reference(F.integer_matmul, q, np.swapaxes(k, -1, -2))
    np.testing.assert_array_equal(got, want)
    assert want.max() == 2**14 * 64


@pytest.mark.parametrize("transpose_b", [False, True])
def test_integer_batch_matmul_of_int16_probabilities_and_values_matches_reference(transpose_b):
    rng = np.random.default_rng(5)
    tokens = 197
    logits = random_ints(rng, (2, 3, tokens, tokens), "int32", -3000, 3000)
    probs = reference(F.shiftmax, logits, F.exp_x0(0.005), 16)  # (B, H, N, N) int16
    probs[0, 0, 0] = 0
    probs[0, 0, 0, 7] = 2**15 - 1  # a one-hot row at full scale
    values = random_ints(rng, (2, 3, tokens, 64), "int8")
    values[0, 0, 7] = -128
    v_operand = np.swapaxes(values, -1, -2) if transpose_b else values
    got = run(("bmm", "int16", transpose_b), build_batch_matmul("int16", True, transpose_b),
              (2, 3, tokens, 64), probs, v_operand)
    np.testing.assert_array_equal(got, reference(F.integer_matmul, probs, values))
    assert got[0, 0, 0].min() == -128 * (2**15 - 1)


@pytest.mark.parametrize("transpose_b", [False, True])
def test_byte_products_sum_to_the_int16_batch_matmul(transpose_b):
    """integer_batch_matmul_low_add(a, b, integer_batch_matmul_high(a, b)) == a @ b for int16
    a over its whole range (the bytes' ends included) and for Shiftmax probabilities."""
    rng = np.random.default_rng(9)
    tokens = 197
    probs = random_ints(rng, (2, 3, tokens, tokens), "int16")  # any int16, signs included
    probs[0, 0, :, :5] = np.array([-32768, 32767, -1, 255, 256], np.int16)
    logits = random_ints(rng, (3, tokens, tokens), "int32", -3000, 3000)
    probs[1] = reference(F.shiftmax, logits, F.exp_x0(0.005), 16)
    values = random_ints(rng, (2, 3, tokens, 64), "int8")
    v_operand = np.swapaxes(values, -1, -2) if transpose_b else values

    def build():
        batch, rows = symbolic("batch", "tokens")
        a = te.placeholder((batch, 3, rows, rows), "int16", name="q_a")
        b_dims = (64, rows) if transpose_b else (rows, 64)
        b = te.placeholder((batch, 3, *b_dims), "int8", name="q_b")
        high = ops.integer_batch_matmul_high(a, b, transpose_b=transpose_b)
        return [a, b], ops.integer_batch_matmul_low_add(a, b, high, transpose_b=transpose_b)

    got = run(("bmm_bytes", transpose_b), build, (2, 3, tokens, 64), probs, v_operand)
    np.testing.assert_array_equal(got, reference(F.integer_matmul, probs, values))


def test_byte_products_take_int16_only():
    a = te.placeholder((2, 4, 4), "int8", name="q_a")
    b = te.placeholder((2, 4, 4), "int8", name="q_b")
    with pytest.raises(TypeError, match="int16"):
        ops.integer_batch_matmul_high(a, b)


def test_integer_batch_matmul_broadcasts_batch_axes():
    rng = np.random.default_rng(3)
    q_a = random_ints(rng, (2, 3, 5, 8), "int8")
    q_b = random_ints(rng, (1, 3, 8, 4), "int8")

    def build():
        a = te.placeholder(q_a.shape, "int8", name="q_a")
        b = te.placeholder(q_b.shape, "int8", name="q_b")
        return [a, b], ops.integer_batch_matmul(a, b)

    got = run("bmm_broadcast", build, (2, 3, 5, 4), q_a, q_b)
    np.testing.assert_array_equal(got, reference(F.integer_matmul, q_a, q_b))


# ---- any rank --------------------------------------------------------------------------------


ROW_OPS = {
    "shiftmax": (lambda q: ops.shiftmax(q, F.exp_x0(0.01), 16),
                 lambda q: F.shiftmax(q, F.exp_x0(0.01), 16)),
    "shiftgelu": (lambda q: ops.shiftgelu(q, F.gelu_x0(0.01)),
                  lambda q: F.shiftgelu(q, F.gelu_x0(0.01))),
    "int_layernorm": (lambda q: ops.int_layernorm(q, te.compute(q.shape[-1:], lambda c: c * 9)),
                      lambda q: F.int_layernorm(q, torch.arange(q.shape[-1]) * 9)),
    "requantize": (lambda q: ops.requantize(q, 1 << 30, 33, 8),
                   lambda q: F.requantize(q, 1 << 30, 33, 8)),
}


@pytest.mark.parametrize("shape", [(64,), (2, 7, 64), (2, 3, 5, 64)])
@pytest.mark.parametrize("name", list(ROW_OPS))
def test_last_axis_ops_accept_any_rank(name, shape):
    build_op, reference_op = ROW_OPS[name]
    q = random_ints(np.random.default_rng(len(shape)), shape, "int16", -3000, 3000)

    def build():
        q_t = te.placeholder(shape, "int16", name="q")
        return [q_t], build_op(q_t)

    got = run(("rank", name, shape), build, shape, q)
    np.testing.assert_array_equal(got, reference_op(torch.from_numpy(q)).numpy())


def test_exp_ops_reject_non_negative_x0():
    q = te.placeholder((4, 8), "int8", name="q")
    with pytest.raises(ValueError, match="x0"):
        ops.shiftmax(q, 0, 8)
    with pytest.raises(ValueError, match="x0"):
        ops.shiftgelu(q, 3)


# ---- Relax -----------------------------------------------------------------------------------


def test_ops_chain_inside_relax_block_builder_matches_reference():
    """dense -> per-channel requantize -> layernorm -> requantize -> shiftgelu, via emit_te."""
    rng = np.random.default_rng(11)
    rows, reduce, channels = 49, 64, 32
    weight_q = random_ints(rng, (channels, reduce), "int8")
    bias_q = random_ints(rng, (channels,), "int32", -5000, 5000)
    ln_bias_q = random_ints(rng, (channels,), "int32", -(2**20), 2**20)
    multiplier, shift = F.dyadic(np.exp(rng.uniform(np.log(1e-3), np.log(1e-2), channels)))
    ln_multiplier, ln_shift = (int(v[0]) for v in F.dyadic(2.0**-22))
    gelu_x0 = F.gelu_x0(0.03)

    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    x = relax.Var("x", relax.TensorType((n, reduce), "int8"))  # (n, K) int8
    with bb.function("main", [x]):
        with bb.dataflow():
            acc = bb.emit_te(ops.integer_dense, x, relax.const(weight_q), relax.const(bias_q),
                             primfunc_name_hint="ivit_dense")
            q8 = bb.emit_te(ops.requantize, acc, relax.const(multiplier), relax.const(shift),
                            bits=8, primfunc_name_hint="ivit_requantize")
            ln = bb.emit_te(ops.int_layernorm, q8, relax.const(ln_bias_q),
                            primfunc_name_hint="ivit_layernorm")
            ln8 = bb.emit_te(ops.requantize, ln, multiplier=ln_multiplier, shift=ln_shift,
                             bits=8, primfunc_name_hint="ivit_requantize_ln")
            out = bb.emit_output(bb.emit_te(ops.shiftgelu, ln8, x0=gelu_x0,
                                            primfunc_name_hint="ivit_shiftgelu"))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=TARGET), tvm.cpu())

    q_x = random_ints(rng, (rows, reduce), "int8")
    got = vm["main"](tvm.runtime.tensor(q_x)).numpy()
    t = torch.from_numpy
    want = F.integer_linear(t(q_x), t(weight_q), t(bias_q))
    want = F.requantize(want, t(multiplier), t(shift), 8)
    want = F.int_layernorm(want, t(ln_bias_q))
    want = F.requantize(want, ln_multiplier, ln_shift, 8)
    want = F.shiftgelu(want, gelu_x0).numpy()
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want)) > 10, "the chain must not collapse to a constant"
