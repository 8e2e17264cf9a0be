"""DeiT and Swin models: integer vs fake-quant agreement, integer dtypes, I-ViT checkpoint keys,
Swin's shifted-window mask, and loading FP timm weights. Reduced models (2 blocks / stages)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import timm
import torch
import torch.nn.functional as F

from ivit_tvm.models import SwinConfig, ViTConfig, build_model, create_model
from ivit_tvm.models.agreement import agreement_report
from ivit_tvm.models.fp_weights import load_fp_weights
from ivit_tvm.models.swin import SwinBlock
from ivit_tvm.quant import IntSoftmax, QuantAct, set_calibration
from ivit_tvm.quant.functional import qrange, storage_dtype

# DeiT-T and Swin-T widths and heads, fewer blocks and smaller images. Swin: stage 0 is 14x14
# in 7x7 windows (block 1 shifted and masked), stage 1 is 7x7 (window = resolution, no shift).
DEIT_T = ViTConfig(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3,
                   num_classes=10)
SWIN_T = SwinConfig(img_size=56, patch_size=4, embed_dim=96, depths=(2, 2), num_heads=(3, 6),
                    window_size=7, num_classes=10)
TIMM_KWARGS = {
    "deit": ("deit_tiny_patch16_224",
             dict(img_size=32, patch_size=8, depth=2, num_classes=10)),
    "swin": ("swin_tiny_patch4_window7_224",
             dict(img_size=56, depths=(2, 2), num_heads=(3, 6), embed_dim=96, window_size=7,
                  num_classes=10)),
}
CONFIGS = {"deit": DEIT_T, "swin": SWIN_T}


def images(config, batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_chans, config.img_size, config.img_size, generator=gen)


@torch.no_grad()
def calibrate(model, config, batches: int = 3):
    """Fake-quant forwards on random batches (EMA ranges, integer buffers), then freeze."""
    model.eval()
    for seed in range(batches):
        model(images(config, 4, seed))
    set_calibration(model, False)
    return model


@pytest.fixture(scope="module", params=["deit", "swin"])
def calibrated(request):
    torch.manual_seed(0)
    config = CONFIGS[request.param]
    return request.param, config, calibrate(build_model(config), config)


@torch.no_grad()
def random_fp_model(arch: str) -> torch.nn.Module:
    """A timm FP model with input-sensitive random weights (timm's init gives nearly
    input-independent logits) and a head bias that centres its logits: balanced classes."""
    torch.manual_seed(0)
    name, kwargs = TIMM_KWARGS[arch]
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    for param_name, p in model.named_parameters():
        if param_name.endswith("weight") and p.dim() >= 2:
            p.normal_(0, p[0].numel() ** -0.5)
        elif "norm" in param_name and param_name.endswith("weight"):
            p.normal_(1, 0.2)
        else:
            p.normal_(0, 1.0 if "relative_position" in param_name else 0.2)
    model.get_classifier().bias -= model(images(CONFIGS[arch], 64, seed=50)).mean(0)
    return model


@pytest.fixture(scope="module")
def timm_models():
    return {arch: random_fp_model(arch) for arch in TIMM_KWARGS}


# ---- integer mode vs fake-quant mode ------------------------------------------------------


def test_integer_logits_equal_float64_fake_quant(calibrated):
    arch, config, model = calibrated
    report = agreement_report(model, images(config, 16, seed=100), dtype=torch.float64)
    print(f"\n{arch} integer vs fake-quant (float64): {report}")
    assert report["max_rel_diff"] < 1e-12  # measured: 0.0, the same integers
    assert report["top1_agreement"] == 1.0


def test_integer_logits_match_float32_fake_quant(calibrated):
    arch, config, model = calibrated
    report = agreement_report(model, images(config, 16, seed=100))
    print(f"\n{arch} integer vs fake-quant (float32): {report}")
    # A float32 carrier holds 24 of I-LayerNorm's 31 bits: rarely, a requantization lands one
    # step off (then ShiftGELU's row max spreads it over the row). Measured: DeiT 4e-8, Swin 8e-3.
    assert report["max_rel_diff"] < 0.05
    assert report["top1_agreement"] == 1.0


def test_integer_mode_is_integer_end_to_end(calibrated):
    _, config, model = calibrated
    outputs = {}

    def record(name):
        def hook(module, inputs, output):
            outputs[name] = (module, output[0] if isinstance(output, tuple) else output)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        q_logits, scale = model.forward_integer(images(config, 2, seed=7))
    finally:
        for handle in handles:
            handle.remove()
    assert q_logits.dtype == torch.int32 and scale.dtype == torch.float32
    floating = [n for n, (_, q) in outputs.items() if q.is_floating_point()]
    assert not floating, f"float outputs in integer mode: {floating}"
    softmaxes = [n for n, m in model.named_modules() if isinstance(m, IntSoftmax)]
    assert set(softmaxes) <= set(outputs)
    for name, (module, q) in outputs.items():
        if isinstance(module, QuantAct):
            low, high = qrange(module.activation_bit)
            assert q.dtype == storage_dtype(module.activation_bit), name
            assert low <= q.min().item() and q.max().item() <= high, name


# ---- checkpoint keys (I-ViT's layout) --------------------------------------------------------

KEYS_OF = {
    "act": ("act_scaling_factor",),
    "linear": ("weight", "bias", "fc_scaling_factor", "weight_integer", "bias_integer"),
    "linear_no_bias": ("weight", "fc_scaling_factor", "weight_integer"),
    "conv": ("weight", "bias", "conv_scaling_factor", "weight_integer", "bias_integer"),
    "norm": ("weight", "bias", "norm_scaling_factor", "bias_integer"),
    "tensor": ("",),
}


def expand(prefix: str, layout: dict[str, str]) -> set[str]:
    return {f"{prefix}{name}.{key}".rstrip(".")
            for name, kind in layout.items() for key in KEYS_OF[kind]}


SWIN_TOP = {
    "qact_input": "act", "patch_embed.proj": "conv", "patch_embed.qact_before_norm": "act",
    "patch_embed.norm": "norm", "patch_embed.qact": "act", "qact1": "act", "norm": "norm",
    "qact2": "act", "qact3": "act", "head": "linear", "act_out": "act",
}
SWIN_BLOCK = {
    "norm1": "norm", "qact1": "act", "attn.qkv": "linear", "attn.qact1": "act",
    "attn.qact_attn1": "act", "attn.qact_table": "act", "attn.qact2": "act",
    "attn.log_int_softmax": "act", "attn.qact3": "act", "attn.qact4": "act",
    "attn.proj": "linear", "attn.matmul_1": "act", "attn.matmul_2": "act",
    "attn.relative_position_bias_table": "tensor", "attn.relative_position_index": "tensor",
    "qact2": "act", "norm2": "norm", "qact3": "act", "mlp.fc1": "linear", "mlp.qact_gelu": "act",
    "mlp.act": "act", "mlp.qact1": "act", "mlp.fc2": "linear", "mlp.qact2": "act",
    "qact4": "act",
}
SWIN_MERGE = {"norm": "norm", "qact1": "act", "reduction": "linear_no_bias", "qact2": "act"}


def test_swin_tiny_state_dict_keys_match_ivit():
    depths = (2, 2, 6, 2)
    shifted_stages = (0, 1, 2)  # stage 3 is 7x7 = one window: no shift, no attn_mask
    expected = expand("", SWIN_TOP)
    for i, depth in enumerate(depths):
        for j in range(depth):
            expected |= expand(f"layers.{i}.blocks.{j}.", SWIN_BLOCK)
            if j % 2 == 1 and i in shifted_stages:
                expected.add(f"layers.{i}.blocks.{j}.attn_mask")
        if i < len(depths) - 1:
            expected |= expand(f"layers.{i}.downsample.", SWIN_MERGE)
    keys = list(create_model("swin_tiny").state_dict())
    assert len(keys) == len(expected) == 621
    assert set(keys) == expected, (sorted(set(keys) - expected), sorted(expected - set(keys)))
    assert sum(k.endswith("attn_mask") for k in keys) == 5


VIT_TOP = {
    "qact_input": "act", "patch_embed.proj": "conv", "patch_embed.qact": "act",
    "cls_token": "tensor", "pos_embed": "tensor", "qact_pos": "act", "qact1": "act",
    "norm": "norm", "qact2": "act", "head": "linear", "act_out": "act",
}
VIT_BLOCK = {
    "norm1": "norm", "qact1": "act", "attn.qkv": "linear", "attn.qact1": "act",
    "attn.matmul_1": "act", "attn.qact_attn1": "act", "attn.int_softmax": "act",
    "attn.qact_softmax": "act", "attn.matmul_2": "act", "attn.qact2": "act",
    "attn.proj": "linear", "attn.qact3": "act", "qact2": "act", "norm2": "norm", "qact3": "act",
    "mlp.fc1": "linear", "mlp.qact_gelu": "act", "mlp.act": "act", "mlp.qact1": "act",
    "mlp.fc2": "linear", "mlp.qact2": "act", "qact4": "act",
}


def test_deit_tiny_state_dict_keys_match_ivit():
    expected = expand("", VIT_TOP)
    for i in range(12):
        expected |= expand(f"blocks.{i}.", VIT_BLOCK)
    keys = list(create_model("deit_tiny").state_dict())
    assert len(keys) == len(expected) == 550
    assert set(keys) == expected, (sorted(set(keys) - expected), sorted(expected - set(keys)))


# ---- Swin's shifted windows ------------------------------------------------------------------


def test_shifted_window_masks_equal_timm(timm_models):
    ours = [m for m in build_model(SWIN_T).modules() if isinstance(m, SwinBlock)]
    theirs = [blk for stage in timm_models["swin"].layers for blk in stage.blocks]
    assert len(ours) == len(theirs)
    assert any(b.attn_mask is not None for b in ours)
    for ours_block, timm_block in zip(ours, theirs, strict=True):
        if timm_block.attn_mask is None:
            assert ours_block.attn_mask is None
        else:
            assert torch.equal(ours_block.attn_mask, timm_block.attn_mask)


def test_shifted_window_softmax_zeroes_masked_pairs():
    torch.manual_seed(0)
    model = calibrate(build_model(SWIN_T), SWIN_T)
    block = model.layers[0].blocks[1]
    captured = []
    handle = block.attn.log_int_softmax.register_forward_hook(
        lambda module, inputs, output: captured.append(output[0]))
    try:
        model.forward_integer(images(SWIN_T, 2, seed=11))
    finally:
        handle.remove()
    probs = captured[0].to(torch.int64)  # (B, nW, heads, N, N), scale 2**-7
    masked = (block.attn_mask != 0)[None, :, None].expand_as(probs)
    n = probs.shape[-1]
    assert masked.any() and not masked.all()
    assert (probs[masked] == 0).all()  # the minimum: 2**-15 of the row max, floored to 0
    sums = probs.masked_fill(masked, 0).sum(dim=-1)  # each row loses < 1 per token to floors
    print(f"\nshifted-window softmax row sums: {sums.min().item()}..{sums.max().item()} (128)")
    assert (sums <= 2**7).all() and (sums > 2**7 - n).all()


# ---- FP timm weights -------------------------------------------------------------------------


def fp_agreement(arch: str, reference, softmax_bits: int | None = None) -> dict[str, float]:
    """Calibrated fake-quant model with `reference`'s weights vs the FP logits (64 images)."""
    torch.manual_seed(0)
    config = CONFIGS[arch]
    model = build_model(config)
    load_fp_weights(model, reference.state_dict())
    if softmax_bits is not None:
        for module in model.modules():
            if isinstance(module, IntSoftmax):
                module.output_bit = softmax_bits
    calibrate(model, config, batches=4)
    x = images(config, 64, seed=200)
    with torch.no_grad():
        fp, fake = reference(x), model(x)
    cosine = F.cosine_similarity(fp, fake, dim=1)
    return {
        "cosine_min": cosine.min().item(), "cosine_mean": cosine.mean().item(),
        "top1_agreement": (fp.argmax(1) == fake.argmax(1)).float().mean().item(),
        "classes_predicted": fp.argmax(1).unique().numel(),
    }


# Swin with a 16-bit softmax here: I-ViT's 8-bit one dominates the error on this random
# network (next test) and would hide what this test is about, the weight mapping.
@pytest.mark.parametrize(("arch", "softmax_bits"), [("deit", None), ("swin", 16)])
def test_timm_fp_weights_give_timm_logits(arch, softmax_bits, timm_models):
    report = fp_agreement(arch, timm_models[arch], softmax_bits=softmax_bits)
    print(f"\n{arch} fake-quant vs timm FP: {report}")
    # Measured 0.996 / 0.992 mean, 0.98 / 0.97 min. Mis-mapped: swapped norm1/norm2 or q/k
    # rows give a mean < 0.6; a zeroed relative-position table in Swin a min of 0.71.
    assert report["cosine_mean"] > 0.97
    assert report["cosine_min"] > 0.9
    assert report["top1_agreement"] >= 0.8


def test_swin_8bit_softmax_cost_vs_timm(timm_models):
    report = fp_agreement("swin", timm_models["swin"])
    print(f"\nswin (I-ViT 8-bit softmax) fake-quant vs timm FP: {report}")
    assert report["cosine_mean"] > 0.7  # measured 0.83: PTQ cost before any QAT


def test_load_fp_weights_names_missing_keys(timm_models):
    model = build_model(replace(DEIT_T, depth=3))
    with pytest.raises(ValueError, match=r"missing \[blocks\.2\."):
        load_fp_weights(model, timm_models["deit"].state_dict())


def test_load_fp_weights_names_shape_mismatch(timm_models):
    model = build_model(replace(SWIN_T, num_classes=5))
    with pytest.raises(ValueError, match=r"shape \(timm != ours\) \[head\.bias \(10,\) != \(5,\)"):
        load_fp_weights(model, timm_models["swin"].state_dict())
