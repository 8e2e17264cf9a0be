"""quant.fast against quant.functional (the definition): equal bit for bit on random, extreme
and exhaustive 8-bit inputs, on both sides of every exactness bound (float32 2**24, float64
2**53, table sizes), for integer tensors and for the fake-quant path's integer-valued floats."""

from __future__ import annotations

import pytest
import torch

from ivit_tvm.quant import fast
from ivit_tvm.quant import functional as qf
from ivit_tvm.quant.constants import INT32_MAX, SHIFTMAX_N


def rand_int(shape, low, high, seed=0, dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, shape, generator=g, dtype=torch.int64).to(dtype)


def assert_same(fast_out: torch.Tensor, reference: torch.Tensor) -> None:
    assert fast_out.dtype == reference.dtype
    assert torch.equal(fast_out, reference)


# ---- requantization -----------------------------------------------------------------------


RATIOS = [3.7e-9, 2.1e-6, 1.3e-3, 0.0421, 0.5, 0.99999, 7.5]


@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("q_range", [2**7, 2**15, 2**21, 2**31 - 1])
def test_requantize_equals_definition(ratio, bits, q_range):
    q = rand_int((4000,), -q_range, q_range, seed=1, dtype=torch.int64)
    multiplier, shift = qf.dyadic(ratio)
    reference = qf.requantize(q, multiplier, shift, bits)
    for q_in in (q.to(torch.int32), q.to(torch.float64)):
        assert_same(fast.requantize(q_in, multiplier, shift, bits), reference)


def test_requantize_ties_round_half_even():
    """q * m / 2**s exactly at k + 1/2 for many k: the float64 path rounds ties to even."""
    multiplier, shift = qf.dyadic(0.5)  # q / 2: every odd q is a tie
    q = torch.arange(-300, 301, dtype=torch.int32)
    assert_same(fast.requantize(q, multiplier, shift, 8), qf.requantize(q, multiplier, shift, 8))
    assert fast.requantize(torch.tensor([1, 3, 5, -1, -3], dtype=torch.int32), multiplier,
                           shift, 8).tolist() == [0, 2, 2, 0, -2]


def test_requantize_per_channel_and_large_inputs_fall_back():
    """I-LayerNorm's int32 outputs times a 31-bit multiplier pass 2**53: the int64 path."""
    q = rand_int((64, 3, 16), -(2**31), 2**31 - 1, seed=2, dtype=torch.int32)
    multiplier, shift = qf.dyadic(torch.rand(16, generator=torch.Generator().manual_seed(3))
                                  .double().numpy() * 1e-7 + 1e-9)
    reference = qf.requantize(q, torch.tensor(multiplier), torch.tensor(shift), 8)
    assert_same(fast.requantize(q, multiplier, shift, 8), reference)
    # just under the bound: the float64 path, still equal
    bound = fast.FLOAT64_EXACT // int(abs(multiplier).max()) - 1
    edge = torch.tensor([bound, -bound, bound - 1, 12345], dtype=torch.int64)
    assert_same(fast.requantize(edge, multiplier[:1], shift[:1], 16),
                qf.requantize(edge, multiplier[:1], shift[:1], 16))


@pytest.mark.parametrize("q_range", [2**15, 2**30])
def test_requantize_add_equals_definition(q_range):
    a = rand_int((3000,), -q_range, q_range, seed=4, dtype=torch.int32)
    b = rand_int((3000,), -(2**15), 2**15 - 1, seed=5, dtype=torch.int16)
    m_a, s_a = qf.dyadic(3.3e-3 if q_range == 2**15 else 2e-7)
    m_b, s_b = qf.dyadic(0.77)
    reference = qf.requantize_add(a, m_a, s_a, b, m_b, s_b, 16)
    assert_same(fast.requantize_add(a, m_a, s_a, b, m_b, s_b, 16), reference)
    assert_same(fast.requantize_add(a.double(), m_a, s_a, b.float(), m_b, s_b, 16), reference)


# ---- matmuls ------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [64, 384, 1032, 1033, 1536, 3072])
def test_integer_linear_at_worst_case_magnitudes(k):
    """Every term -128 * -128 (weights -128 too): partial sums up to k * 2**14, beyond 2**24
    for k > 1024, so the float32 GEMM must be cut into exact chunks."""
    x = torch.full((3, 5, k), -128, dtype=torch.int8)
    w = torch.full((7, k), -128.0)  # weight_integer is stored as floats
    bias = torch.tensor([0, 1, -1, 2**20, -(2**20), 2**30, -(2**31)], dtype=torch.float64)
    reference = qf.integer_linear(x, w.long(), bias.long())
    assert_same(fast.integer_linear(x, w, bias), reference)
    assert_same(fast.integer_linear(x, w, None), qf.integer_linear(x, w.long(), None))


@pytest.mark.parametrize("k", [192, 1536])
def test_integer_linear_random_and_saturating(k):
    x = rand_int((2, 9, k), -128, 127, seed=6, dtype=torch.int8)
    w = rand_int((11, k), -127, 127, seed=7).float()
    bias = rand_int((11,), -(2**31), 2**31 - 1, seed=8).float()  # some sums saturate
    assert_same(fast.integer_linear(x, w, bias), qf.integer_linear(x, w.long(), bias.long()))


def test_integer_linear_large_inputs_fall_back_to_int64():
    x = rand_int((4, 300), -(2**31), 2**31 - 1, seed=9, dtype=torch.int32)
    w = rand_int((5, 300), -(2**20), 2**20, seed=10)
    assert_same(fast.integer_linear(x, w, None), qf.integer_linear(x, w, None))


def test_integer_linear_exact_at_reduced_float32_matmul_precision():
    """With bf16/tf32 matmuls allowed, float32 GEMMs are not exact: float64 is used instead."""
    x = rand_int((8, 768), -128, 127, seed=11, dtype=torch.int8)
    w = rand_int((16, 768), -128, 127, seed=12).float()
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        assert not fast.float32_gemm_allowed()
        out = fast.integer_linear(x, w, None)
    finally:
        torch.set_float32_matmul_precision(before)
    assert_same(out, qf.integer_linear(x, w.long(), None))


@pytest.mark.parametrize("dtype_a,k", [(torch.int8, 64), (torch.int16, 197), (torch.int8, 2000)])
def test_integer_matmul_equals_definition(dtype_a, k):
    """q @ k^T (int8, K = head dim) and Shiftmax output @ v (int16 x int8, K = tokens)."""
    low, high = (-128, 127) if dtype_a == torch.int8 else (-(2**15), 2**15 - 1)
    a = rand_int((2, 3, 17, k), low, high, seed=13, dtype=dtype_a)
    b = rand_int((2, 3, k, 19), -128, 127, seed=14, dtype=torch.int8)
    assert_same(fast.integer_matmul(a, b), qf.integer_matmul(a, b))
    extreme = torch.full_like(a, low)
    assert_same(fast.integer_matmul(extreme, torch.full_like(b, -128)),
                qf.integer_matmul(extreme, torch.full_like(b, -128)))


# ---- Shiftmax and ShiftGELU ------------------------------------------------------------------


X0_SCALES = [0.3, 0.05, 0.01, 1e-3, 2.0**-12]  # the smallest saturate shift_exp's 2**31


def test_exp_table_is_shift_exp_exhaustively():
    for scale in X0_SCALES:
        x0 = qf.exp_x0(scale)
        x = torch.arange(-255, 1)
        table = fast.exp_table(x0, SHIFTMAX_N, 255)
        assert torch.equal(table.long(), qf.shift_exp(x, x0, SHIFTMAX_N))
        assert int(table.min()) >= 1 and int(table.max()) <= INT32_MAX


@pytest.mark.parametrize("scale", X0_SCALES)
@pytest.mark.parametrize("out_bits", [8, 16])
def test_shiftmax_equals_definition(scale, out_bits):
    x0 = qf.exp_x0(scale)
    q = rand_int((6, 4, 197), -128, 127, seed=15, dtype=torch.int8)
    q[0, 0] = 127  # a constant row
    q[0, 1] = -128
    q[0, 2, :5] = 127  # one spike, the rest at the bottom: x spans all 256 values
    q[0, 2, 5:] = -128
    reference = qf.shiftmax(q, x0, out_bits)
    assert_same(fast.shiftmax(q, x0, out_bits), reference)
    assert_same(fast.shiftmax(q.float(), x0, out_bits), reference)  # fake-quant's floats


def test_shiftmax_with_mask_including_fully_masked_rows():
    x0 = qf.exp_x0(0.04)
    q = rand_int((2, 3, 2, 16, 16), -128, 127, seed=16, dtype=torch.int8)
    mask = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(17)) < 0.4
    mask[0, 0, 3] = True  # a fully masked row
    for out_bits in (8, 16):
        assert_same(fast.shiftmax(q, x0, out_bits, mask), qf.shiftmax(q, x0, out_bits, mask))


def test_shiftmax_wide_inputs_table_and_fallback():
    x0 = qf.exp_x0(0.002)
    wide = rand_int((5, 300), -3000, 3000, seed=18, dtype=torch.int32)  # 4096-entry table
    assert_same(fast.shiftmax(wide, x0, 16), qf.shiftmax(wide, x0, 16))
    wider = rand_int((5, 300), -(2**20), 2**20, seed=19, dtype=torch.int32)  # int64 path
    assert_same(fast.shiftmax(wider, x0, 16), qf.shiftmax(wider, x0, 16))


@pytest.mark.parametrize("scale", [0.2, 0.03, 0.004, 2.0**-10])
def test_shiftgelu_exhaustive_over_value_and_row_max(scale):
    """Every (value, row max) pair of 8-bit inputs, each row max with every value below it."""
    x0 = qf.gelu_x0(scale)
    values = torch.arange(-128, 128)
    grid = torch.minimum(values[None, :], values[:, None]).to(torch.int8)  # row r: max -128+r
    reference = qf.shiftgelu(grid, x0)
    assert_same(fast.shiftgelu(grid, x0), reference)
    assert_same(fast.shiftgelu(grid.float(), x0), reference)
    shuffled = grid[:, torch.randperm(256, generator=torch.Generator().manual_seed(20))]
    assert_same(fast.shiftgelu(shuffled, x0), qf.shiftgelu(shuffled, x0))


def test_shiftgelu_other_ranges():
    x0 = qf.gelu_x0(0.01)
    shifted = rand_int((7, 50), 100, 300, seed=21, dtype=torch.int32)  # 201 values, not int8
    assert_same(fast.shiftgelu(shifted, x0), qf.shiftgelu(shifted, x0))
    wide = rand_int((7, 50), -2000, 2000, seed=22, dtype=torch.int32)  # int64 path
    assert_same(fast.shiftgelu(wide, x0), qf.shiftgelu(wide, x0))


# ---- I-LayerNorm --------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [192, 384, 1024])
def test_int_layernorm_equals_definition(channels):
    q = rand_int((3, 40, channels), -(2**15), 2**15 - 1, seed=23, dtype=torch.int16)
    q[0, 0] = 7  # zero variance
    q[0, 1] = -(2**15)
    q[0, 2, ::2] = 2**15 - 1  # the largest variance
    q[0, 2, 1::2] = -(2**15)
    q[0, 3] = 0
    q[0, 3, 0] = 2**15 - 1  # one outlier
    bias = rand_int((channels,), -(2**31), 2**31 - 1, seed=24).float()  # some outputs saturate
    reference = qf.int_layernorm(q, bias.long())
    assert_same(fast.int_layernorm(q, bias), reference)
    assert_same(fast.int_layernorm(q.float(), bias), reference)
    assert_same(fast.int_layernorm(q.to(torch.float64), bias.double()), reference)


def test_int_layernorm_wide_inputs_fall_back():
    q = rand_int((4, 96), -(2**28), 2**28, seed=25, dtype=torch.int32)
    bias = rand_int((96,), -1000, 1000, seed=26)
    assert_same(fast.int_layernorm(q, bias), qf.int_layernorm(q, bias))


# ---- the modules' fast fake-quant path --------------------------------------------------------


def test_weight_codes_follow_in_place_weight_updates():
    """The cached integer weights are recomputed after an optimizer-style in-place update, a
    load_state_dict and a cast, so the integer buffers always match the weights."""
    from ivit_tvm.quant import QuantLinear

    torch.manual_seed(0)
    layer = QuantLinear(16, 8)
    scale_in = torch.tensor([0.05])
    x = torch.randn(4, 16)

    def expected_codes(module):
        w = module.weight.detach()
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return torch.round(w / scale.clamp(min=torch.finfo(torch.float32).eps))

    with torch.no_grad():
        layer(x, scale_in)
        assert torch.equal(layer.weight_integer, expected_codes(layer))
        layer.weight.mul_(-3.0)  # as an optimizer step: in place
        layer(x, scale_in)
        assert torch.equal(layer.weight_integer, expected_codes(layer))
        other = QuantLinear(16, 8)
        layer.load_state_dict(other.state_dict())
        layer(x, scale_in)
        assert torch.equal(layer.weight_integer, expected_codes(other))
        layer.double()(x.double(), scale_in)
        assert layer.weight_integer.dtype == torch.float64


def test_fake_quant_value_without_autograd_equals_straight_through_value():
    """Under no_grad the modules skip the surrogate; the values are the same as with it."""
    from ivit_tvm.quant import IntGELU, IntSoftmax, QuantAct

    torch.manual_seed(1)
    scale = torch.tensor([0.04])
    x = torch.round(torch.randn(2, 5, 33) * 30).clamp(-128, 127) * scale
    act = QuantAct(8)
    act.act_scaling_factor = torch.tensor([0.02])
    act.freeze()
    for module, args in ((act, (scale,)), (IntSoftmax(16), (scale,)), (IntGELU(), (scale,))):
        with torch.no_grad():
            fast_value, fast_scale = module(x, *args)
        with_grad, grad_scale = module(x.clone().requires_grad_(), *args)
        assert torch.equal(fast_value, with_grad.detach()), type(module).__name__
        assert torch.equal(fast_scale, grad_scale)


def test_weight_codes_from_inference_mode_do_not_reach_autograd():
    """A forward under inference_mode, then a training forward and backward (a QAT step after
    an evaluation) on the same layer."""
    from ivit_tvm.quant import QuantLinear

    torch.manual_seed(2)
    layer = QuantLinear(16, 8)
    scale_in = torch.tensor([0.05])
    x = torch.randn(4, 16)
    with torch.inference_mode():
        expected, _ = layer(x, scale_in)
    out, _ = layer(x, scale_in)
    out.sum().backward()
    assert layer.weight.grad is not None and torch.equal(out.detach(), expected)
