"""The integer functions against the float functions they approximate, and on extreme inputs.

Error bounds are stated where the function is used as I-ViT uses it: 8-bit softmax/GELU inputs
over a calibrated range, a 16-bit residual stream into LayerNorm. Outside those ranges the
approximations degrade by design (e.g. ShiftGELU's exponential clamps at 2**-23), which the
tests document rather than hide.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from support import half_step_inputs

from ivit_tvm.quant import functional as qf

INT8 = (-128, 127)
INT16 = (-32768, 32767)


def rand_q(shape, low, high, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(low, high + 1, shape, generator=g, dtype=torch.int64)


# ---- requantization -----------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1e-6, 3.3e-4, 0.0123, 0.5, 0.999999, 1.0, 1.7, 1234.5])
def test_dyadic_multiplier_matches_ratio(ratio):
    multiplier, shift = qf.dyadic(ratio)
    assert 0 < multiplier[0] < 2**31 and 1 <= shift[0] <= qf.MAX_SHIFT
    assert abs(multiplier[0] / 2.0 ** shift[0] - ratio) <= ratio * 2.0**-30


def test_dyadic_refuses_ratio_beyond_int31():
    with pytest.raises(ValueError, match="recalibrate"):
        qf.dyadic(2.0**31)


def test_rshift_round_is_round_half_even():
    x = torch.arange(-4096, 4096, dtype=torch.int64)
    for shift in (1, 3, 7):
        expected = np.round(x.numpy() / 2.0**shift)  # numpy rounds half to even, exact here
        np.testing.assert_array_equal(qf.rshift_round(x, shift).numpy(), expected)


def test_requantize_close_to_float_scaling_and_saturates():
    q = rand_q((1000,), -(2**31), 2**31 - 1, seed=1)
    ratio = 3.7e-6
    multiplier, shift = qf.dyadic(ratio)
    out = qf.requantize(q, multiplier, shift, 16)
    expected = np.clip(np.round(q.numpy().astype(np.float64) * ratio), *INT16)
    assert out.dtype == torch.int16
    assert np.abs(out.numpy() - expected).max() <= 1


def test_requantize_per_channel_uses_last_axis():
    q = torch.full((2, 3), 1000, dtype=torch.int64)
    multiplier, shift = qf.dyadic([0.01, 0.02, 0.04])
    out = qf.requantize(q, torch.tensor(multiplier), torch.tensor(shift), 8)
    assert out.tolist() == [[10, 20, 40], [10, 20, 40]]


def test_requantize_add_sums_both_operands_and_clamps():
    a = torch.tensor([100, 32767], dtype=torch.int64)
    b = torch.tensor([50, 32767], dtype=torch.int64)
    m_a, s_a = qf.dyadic(0.5)
    m_b, s_b = qf.dyadic(2.0)
    out = qf.requantize_add(a, m_a, s_a, b, m_b, s_b, 16)
    assert out.tolist() == [150, 32767]


# ---- Shiftmax -----------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.01, 0.03, 0.1])
@pytest.mark.parametrize("out_bits,bound", [(16, 0.02), (8, 0.025)])
def test_shiftmax_close_to_softmax(scale, out_bits, bound):
    q = rand_q((64, 197), *INT8, seed=2)
    probs = qf.shiftmax(q, qf.exp_x0(scale), out_bits).double() / 2 ** (out_bits - 1)
    error = (probs - torch.softmax(q.double() * scale, dim=-1)).abs().max().item()
    assert error < bound


@pytest.mark.parametrize("out_bits", [8, 16])
def test_shiftmax_extreme_rows_stay_in_range(out_bits):
    n = 197
    rows = torch.stack([
        torch.full((n,), 127), torch.full((n,), -128),  # all equal
        torch.where(torch.arange(n) == 5, 127, -128),  # one-hot
        torch.where(torch.arange(n) % 2 == 0, 127, -128),  # half at max
    ]).to(torch.int64)
    for scale in (1e-4, 0.05, 2.0):
        y = qf.shiftmax(rows, qf.exp_x0(scale), out_bits).to(torch.int64)
        assert y.min() >= 0 and y.max() <= 2 ** (out_bits - 1) - 1
        assert torch.all(y[0] == y[0, 0]) and torch.equal(y[0], y[1])  # uniform rows
        assert y[2, 5] == y[2].max()
        if -qf.exp_x0(scale) * 2**qf.SHIFTMAX_N * n < qf.INT32_MAX:  # sum not saturated
            assert y.sum(dim=-1).max() <= 2 ** (out_bits - 1)


def test_shiftmax_mask_drives_logits_to_the_floor():
    q = rand_q((4, 49), *INT8, seed=3)
    mask = torch.zeros(4, 49, dtype=torch.bool)
    mask[:, 10:] = True
    masked = qf.shiftmax(q, qf.exp_x0(0.05), 8, mask)
    floor = qf.shiftmax(torch.tensor([[0] + [-(2**20)] * 48]), qf.exp_x0(0.05), 8)[0, 1]
    assert torch.all(masked[:, 10:] <= floor)
    probs = masked[:, :10].double() / 2**7
    expected = torch.softmax(q[:, :10].double() * 0.05, dim=-1)
    assert (probs - expected).abs().max() < 0.03


# ---- ShiftGELU ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_abs,bound", [(2.0, 0.15), (4.0, 0.07), (8.0, 0.045)])
def test_shiftgelu_close_to_gelu_over_calibrated_range(max_abs, bound):
    """Error relative to the input range. The sigmoid's divisor f = (2**31-1) // (e1 + e2) is
    a small integer when |x0| * 2**23 is large (x0 = -38 at range 2: f ~ 6), so ShiftGELU is
    coarse for narrow input ranges; it is I-ViT's algorithm, reproduced, not improved."""
    scale = max_abs / 127
    q = rand_q((64, 384), *INT8, seed=4)
    y = qf.shiftgelu(q, qf.gelu_x0(scale)).double() * scale / 2**7
    error = (y - F.gelu(q.double() * scale)).abs().max().item()
    assert error < bound * max_abs


def test_shiftgelu_extremes_do_not_overflow():
    rows = torch.stack([torch.full((16,), 127), torch.full((16,), -128),
                        torch.where(torch.arange(16) == 0, 127, -128)]).to(torch.int64)
    for scale in (1e-5, 0.05, 3.0):
        y = qf.shiftgelu(rows, qf.gelu_x0(scale)).to(torch.int64)
        assert y.abs().max() <= 128 * 127  # |q| * sigmoid, sigmoid <= 127
        assert torch.all(y[0] >= 0)  # GELU of the largest positive input stays positive


def test_shift_exp_saturates_instead_of_overflowing():
    x = torch.tensor([0, 10**6, -(10**9)], dtype=torch.int64)
    e = qf.shift_exp(x, x0=-(2**29), n=23)
    assert e.max() == qf.INT32_MAX and e.min() >= 1


# ---- I-LayerNorm ---------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 192, 768])
def test_int_layernorm_close_to_layernorm_on_16bit_stream(channels):
    q = rand_q((32, channels), -20000, 20000, seed=5)
    y = qf.int_layernorm(q, torch.zeros(channels, dtype=torch.int64)).double()
    y = y * channels**0.5 / 2**30
    expected = F.layer_norm(q.double(), (channels,))
    assert (y - expected).abs().max().item() < 2e-3


def test_int_layernorm_bias_is_added_in_output_units():
    q = rand_q((4, 64), -20000, 20000, seed=6)
    zero = qf.int_layernorm(q, torch.zeros(64, dtype=torch.int64)).to(torch.int64)
    shifted = qf.int_layernorm(q, torch.full((64,), 12345, dtype=torch.int64)).to(torch.int64)
    assert torch.equal(shifted - zero, torch.full_like(zero, 12345))


def test_int_layernorm_extremes():
    rows = torch.stack([torch.full((384,), 32767), torch.full((384,), -32768),
                        torch.where(torch.arange(384) % 2 == 0, 32767, -32768)]).to(torch.int64)
    y = qf.int_layernorm(rows, torch.zeros(384, dtype=torch.int64))
    assert y.dtype == torch.int32
    assert torch.all(y[:2] == 0)  # all-equal rows normalise to zero
    expected = torch.where(torch.arange(384) % 2 == 0, 1.0, -1.0)
    assert (y[2].double() * 384**0.5 / 2**30 - expected).abs().max() < 2e-3


def test_integer_sqrt_newton_converges_for_large_variance():
    var = torch.tensor([2**20, 10**9, 2**40], dtype=torch.int64)
    k = qf.integer_sqrt_newton(var)
    assert torch.all((k - var.double().sqrt()).abs() <= 1)


def test_functions_refuse_float_tensors():
    with pytest.raises(TypeError, match="integer"):
        qf.shiftmax(torch.zeros(2, 3), -20, 8)


@pytest.mark.parametrize("scale", [0.02, 0.0371, 0.11])
def test_quantize_float_multiplies_by_the_float32_reciprocal_like_the_release(scale):
    x = half_step_inputs(scale)
    s = np.float32(scale)
    release = np.clip(np.round(x * (np.float32(1) / s)), -128, 127)  # round(1. / scale * x)
    by_division = np.clip(np.round(x / s), -128, 127)
    assert (release != by_division).sum() > 0  # the inputs do tell the two formulas apart
    q = qf.quantize_float(torch.from_numpy(x), torch.tensor([s]), 8)
    assert q.dtype == torch.int8
    np.testing.assert_array_equal(q.numpy(), release)
