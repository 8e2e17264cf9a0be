"""Shared test models and helpers: reduced DeiT/Swin configurations, calibrated once."""

from __future__ import annotations

import functools
import re

import numpy as np
import torch

from ivit_tvm.models import model_config
from ivit_tvm.ptq import random_calibrated
from ivit_tvm.quant import IntGELU, IntSoftmax, QuantAct, QuantMatMul

DEIT = model_config("deit_tiny", img_size=32, patch_size=8, depth=2, num_classes=10)
# Stage 0: 8x8 tokens in 4x4 windows (block 1 shifted, masked); stage 1: 4x4, one window.
SWIN = model_config("swin_tiny", img_size=32, patch_size=4, embed_dim=48, depths=(2, 2),
                    num_heads=(3, 6), window_size=4, num_classes=10)


@functools.cache
def quantized(config, seed: int = 0):
    """A calibrated model, shared by the tests (none of them changes it)."""
    return random_calibrated(config, seed=seed)


def images(config, seed: int, batch: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_chans, config.img_size, config.img_size, generator=gen)


def assert_same_outputs(saved, loaded, config) -> None:
    x = images(config, seed=42)
    with torch.no_grad():
        assert torch.equal(saved(x), loaded(x))
    logits, scale = saved.forward_integer(x)
    logits_2, scale_2 = loaded.forward_integer(x)
    assert torch.equal(logits, logits_2) and torch.equal(scale, scale_2)


def public_release_state(model) -> dict[str, torch.Tensor]:
    """Our state_dict with scales in the shapes I-ViT's public release saves: QuantAct,
    matmul and softmax scales as [], GELU's per channel [C], I-LayerNorm's [C]."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        key = f"{name}.act_scaling_factor"
        if isinstance(module, QuantAct | QuantMatMul | IntSoftmax):
            state[key] = state[key].reshape(())
        elif isinstance(module, IntGELU):
            hidden = model.get_submodule(name.rpartition(".")[0]).fc1.out_features
            state[key] = state[key].expand(hidden).clone()
    return state


def deit_and_images():
    """The shared calibrated reduced DeiT and a batch of 3 images for graph-level tests."""
    return quantized(DEIT), images(DEIT, seed=0)


def half_step_inputs(scale: float) -> np.ndarray:
    """float32 values at and next to (k + 1/2) * S, where x * (1/S) and x / S may round apart."""
    s = np.float32(scale)
    base = ((np.arange(-127, 127) + 0.5) * np.float64(s)).astype(np.float32)
    return np.concatenate([base, np.nextafter(base, np.float32(np.inf)),
                           np.nextafter(base, np.float32(-np.inf))])


def digit_folder(root, per_class: int):
    """An ImageFolder under `root` (a pathlib.Path): 10 classes of `per_class` 8x8 digit PNGs
    from the bundled test split (what ivit-eval reads)."""
    from ivit_tvm import data

    digits, labels = data.load_split("test")
    for digit in range(10):
        (root / str(digit)).mkdir()
        for i, index in enumerate((labels == digit).nonzero()[0][:per_class]):
            data.to_pil(digits[index]).save(root / str(digit) / f"{i}.png")
    return root


# ---- generated CUDA source ---------------------------------------------------------------
# TVM's fallback all-reduce for narrow dtypes: a volatile shared-memory tree (no __syncwarp)
VOLATILE_TREE = re.compile(r"\(\(volatile [^)]*\)\s*\w+\)\[[^\]]*threadIdx")


def kernel_body(source: str) -> str:
    """The kernel definition(s) of a generated source, without the header's macros."""
    return source[source.index('extern "C" __global__'):]


# __launch_bounds__(threads) or, for the tensor-core GEMMs, (threads, blocks per SM)
KERNEL_DEFINITION = re.compile(
    r'extern "C" __global__ void __launch_bounds__\(\d+(?:, \d+)?\) (\w+)\([^;]*\{')


def defined_kernels(source: str) -> list[str]:
    """Names of the kernels a generated CUDA source defines (not only declares)."""
    return KERNEL_DEFINITION.findall(source)


# ---- CPU twins of scheduled kernels -----------------------------------------------------
def concrete_shape(buffer, batch: int) -> tuple[int, ...]:
    """A buffer's shape with every symbolic extent (the batch) set to `batch`."""
    import tvm
    from ivit_tvm.schedules.tir_rewrite import substitute
    from tvm import tirx

    analyzer, shape = tvm.sym.Analyzer(), []
    for extent in buffer.shape:
        vmap = {var: tirx.const(batch, var.ty) for var in tirx.analysis.undefined_vars(extent)}
        shape.append(int(analyzer.simplify(substitute(extent, vmap))))
    return tuple(shape)


def twin_and_reference(plain, scheduled, arrays: list, batch: int) -> tuple:
    """(reference, twin) outputs of a kernel: the unscheduled PrimFunc `plain` built for the
    CPU and the CPU twin of its CUDA schedule `scheduled`, both run on `arrays` (numpy
    arrays) with the output, the last parameter, at `batch`."""
    import tvm
    from ivit_tvm.schedules.cuda.twin import build_twin

    reference = tvm.compile(tvm.IRModule({"main": plain.with_attr("global_symbol", "main")}),
                            target=tvm.target.Target({"kind": "llvm"}))["main"]
    out = plain.params[-1].ty
    results = []
    for run in (reference, build_twin(scheduled)["twin"]):
        args = [tvm.runtime.tensor(a, tvm.cpu(0)) for a in arrays]
        args.append(tvm.runtime.tensor(np.zeros(concrete_shape(out, batch), str(out.dtype)),
                                       tvm.cpu(0)))
        run(*args)
        results.append(args[-1].numpy())
    return results[0], results[1]
