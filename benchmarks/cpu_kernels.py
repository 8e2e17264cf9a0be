"""Latency of the llvm build per GEMM ISA: whole models, or each GEMM of a model alone.

    TVM_NUM_THREADS=2 python -m ivit_tvm.benchmarks.cpu_kernels --model deit_small --batch 1 8
    TVM_NUM_THREADS=2 python -m ivit_tvm.benchmarks.cpu_kernels --isa generic avx2 --skip-naive
    TVM_NUM_THREADS=2 python -m ivit_tvm.benchmarks.cpu_kernels --gemms --isa generic avx2

Model mode builds one symbolic-batch executable per pipeline from a randomly initialized,
calibrated model (latency does not depend on the weights): TVM's default pipeline (naive
loops; --skip-naive leaves it out) and cpu_pipeline once per --isa (the GEMM instructions of
schedules.cpu.isa: "generic" is the vectorized loops every x86 CPU runs, the others need the
CPU's features), checks the logits against forward_integer, times the runs interleaved (the
minimum and median of --repeats, wall and process CPU time), and splits each scheduled run by
kernel kind with the VM's instrument hook (which adds a few microseconds per call).

--gemms times the model's GEMMs alone instead (the dense shapes of one block, q @ k^T and
p @ v over all heads), each compiled through cpu_pipeline as the model compiles it, in GOPS
(2 * M * N * K integer operations per second). Other processes on the machine change the
numbers a lot: compare ratios within one run (the interleaving makes them fair).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import time

import numpy as np
import torch
import tvm
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu.pipeline import cpu_pipeline
from ivit_tvm.schedules.targets import GENERIC_ISA, ISA_FEATURES, TargetInfo
from tvm import relax
from tvm.target import codegen

from ivit_tvm import ops
from ivit_tvm.frontend import from_model
from ivit_tvm.models import model_config
from ivit_tvm.ops import names
from ivit_tvm.ptq import random_calibrated

KINDS = ("dense", "batch_matmul", "layernorm", "shiftmax", "shiftgelu", "requantize",
         "quantize_input", "vm.builtin")
ISAS = (GENERIC_ISA, *(name for name, _ in ISA_FEATURES))


def kind_of(symbol: str) -> str:
    return next((kind for kind in KINDS if kind in symbol), "copies (transpose, slice)")


def isa_target(info: TargetInfo, isa: str) -> TargetInfo:
    """info with its GEMMs forced onto `isa`; ValueError when the target's CPU or this host
    (which runs the build) lacks it."""
    needs = dict(ISA_FEATURES).get(isa, ())
    host = get_backend("llvm").make_target().target
    for target, what in ((info.target, "the target's CPU"), (host, "this host")):
        missing = [f for f in needs if not codegen.target_has_features(f, target)]
        if missing:
            raise ValueError(f"GEMM ISA {isa} (--isa, or the --mcpu CPU's): {what} "
                             f"({target.attrs['mcpu']}) lacks {', '.join(missing)}; choose "
                             f"from {', '.join(ISAS)} what it has")
    return TargetInfo(info.target, dataclasses.replace(info.caps, isa=isa))


def timed(fn, repeats: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def kernel_shares(executable, images) -> dict[str, float]:
    """Seconds per kernel kind in one instrumented run of main's calls (own VM: the
    instrument stays on it)."""
    vm = relax.VirtualMachine(executable, tvm.cpu())
    vm["main"](images)
    seconds: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}

    def instrument(_func, symbol, before, _ret, *_args):
        if before:
            started[symbol] = time.perf_counter()
        elif symbol != "main_int8":
            seconds[kind_of(symbol)] += time.perf_counter() - started[symbol]
        return 0

    vm.set_instrument(instrument)
    vm["main"](images)
    return dict(seconds)


# ---- whole models -------------------------------------------------------------------------------
def run_models(args, info: TargetInfo) -> None:
    model = random_calibrated(model_config(args.model, img_size=args.img_size))
    mod = from_model(model).mod
    pipelines = {f"scheduled-{isa}": cpu_pipeline(isa_target(info, isa)) for isa in args.isa}
    if not args.skip_naive:
        pipelines = {"naive": relax.get_default_pipeline(info.target), **pipelines}
    executables, vms = {}, {}
    for name, pipeline in pipelines.items():
        start = time.perf_counter()
        executables[name] = tvm.compile(mod, target=info.target, relax_pipeline=pipeline)
        print(f"compile {name} ({args.mcpu}): {time.perf_counter() - start:.1f} s", flush=True)
        vms[name] = relax.VirtualMachine(executables[name], tvm.cpu())

    for batch in args.batch:
        x = torch.randn(batch, 3, args.img_size, args.img_size)
        images = tvm.runtime.tensor(x.numpy())
        reference = model.forward_integer(x)[0].numpy()
        times = {name: [] for name in vms}
        for name, vm in vms.items():
            exact = np.array_equal(vm["main"](images).numpy(), reference)
            print(f"batch {batch} {name}: bit-exact {exact}", flush=True)
        for _ in range(args.repeats):
            for name, vm in vms.items():
                times[name].append(timed(lambda vm=vm, x=images: vm["main"](x), 1))
        for name, samples in times.items():
            wall, cpu = np.array(samples).T * 1e3
            print(f"batch {batch} {name}: wall min {wall.min():.1f} ms, median "
                  f"{np.median(wall):.1f} ms; CPU time median {np.median(cpu):.1f} ms")
        for name, executable in executables.items():
            if name == "naive":
                continue
            shares = kernel_shares(executable, images)
            total = sum(shares.values())
            print(f"  {name}:")
            for kind, seconds in sorted(shares.items(), key=lambda item: -item[1]):
                print(f"    {kind:28s} {seconds * 1e3:8.2f} ms  {100 * seconds / total:5.1f}%")


# ---- GEMMs alone --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Gemm:
    """One GEMM of the model: `ops` = 2 * M * N * K over all its batch axes."""

    name: str
    module: tvm.IRModule
    inputs: tuple[np.ndarray, ...]
    ops: int


def dense_gemm(name: str, rows: int, k: int, n: int, rng) -> Gemm:
    """x (rows, K) int8 @ W^T, W (N, K) a constant (PackDenseGEMMs packs it)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((rows, k), "int8"))
    weight = rng.integers(-128, 128, (n, k), dtype=np.int8)
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_te(ops.integer_dense, x, relax.const(weight, "int8"),
                             primfunc_name_hint=names.DENSE)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    inputs = (rng.integers(-128, 128, (rows, k), dtype=np.int8),)
    return Gemm(name, bb.get(), inputs, 2 * rows * n * k)


def attention_gemm(name: str, heads: tuple[int, int], tokens: int, depth: int, rng) -> Gemm:
    """q @ k^T (int8 x int8) or p @ v (int16 probabilities x int8), all heads."""
    bb = relax.BlockBuilder()
    if name == "q@k^T":
        shapes, dtypes, transpose = ((tokens, depth), (tokens, depth)), ("int8", "int8"), True
    else:
        shapes, dtypes, transpose = ((tokens, tokens), (tokens, depth)), ("int16", "int8"), False
    args = [relax.Var(v, relax.TensorType((*heads, *s), d))
            for v, s, d in zip("ab", shapes, dtypes, strict=True)]
    with bb.function("main", args):
        with bb.dataflow():
            out = bb.emit_te(ops.integer_batch_matmul, *args, transpose_b=transpose,
                             primfunc_name_hint=names.BATCH_MATMUL)
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    high = {"int8": 128, "int16": 2**15}
    inputs = tuple(rng.integers(0 if d == "int16" else -128, high[d], (*heads, *s), dtype=d)
                   for s, d in zip(shapes, dtypes, strict=True))
    return Gemm(name, bb.get(), inputs, 2 * heads[0] * heads[1] * tokens * tokens * depth)


def model_gemms(args, batch: int) -> list[Gemm]:
    config = model_config(args.model, img_size=args.img_size)
    tokens = (args.img_size // config.patch_size) ** 2 + 1
    dim, hidden = config.embed_dim, int(config.embed_dim * config.mlp_ratio)
    heads = config.num_heads if isinstance(config.num_heads, int) else config.num_heads[0]
    rows, rng = batch * tokens, np.random.default_rng(0)
    return [
        dense_gemm("qkv", rows, dim, 3 * dim, rng),
        dense_gemm("proj", rows, dim, dim, rng),
        dense_gemm("fc1", rows, dim, hidden, rng),
        dense_gemm("fc2", rows, hidden, dim, rng),
        attention_gemm("q@k^T", (batch, heads), tokens, dim // heads, rng),
        attention_gemm("p@v", (batch, heads), tokens, dim // heads, rng),
    ]


def run_gemms(args, info: TargetInfo) -> None:
    for batch in args.batch:
        for gemm in model_gemms(args, batch):
            vms, results = {}, {}
            inputs = [tvm.runtime.tensor(a) for a in gemm.inputs]
            for isa in args.isa:
                ex = tvm.compile(gemm.module, target=info.target,
                                 relax_pipeline=cpu_pipeline(isa_target(info, isa)))
                vms[isa] = relax.VirtualMachine(ex, tvm.cpu())
                results[isa] = vms[isa]["main"](*inputs).numpy()
            first = results[args.isa[0]]
            agree = all(np.array_equal(first, r) for r in results.values())
            samples = {isa: [] for isa in vms}
            for _ in range(args.repeats):
                for isa, vm in vms.items():
                    samples[isa].append(timed(lambda vm=vm, xs=inputs: vm["main"](*xs), 3))
            cells = []
            for isa, values in samples.items():
                wall = min(w for w, _ in values)
                cells.append(f"{isa} {wall * 1e3:7.2f} ms {gemm.ops / wall / 1e9:6.1f} GOPS")
            print(f"batch {batch} {gemm.name:6s} | " + " | ".join(cells)
                  + ("" if agree else "  RESULTS DIFFER"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--model", default="deit_small", help="model short name (deit_small)")
    parser.add_argument("--img-size", type=int, default=224, help="image size in pixels")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per pipeline")
    parser.add_argument("--mcpu", default=codegen.llvm_get_system_cpu(),
                        help="LLVM CPU to build for (default: this host's); must run here")
    parser.add_argument("--isa", nargs="+", choices=ISAS,
                        help="GEMM ISAs to compare (default: the target's own)")
    parser.add_argument("--skip-naive", action="store_true",
                        help="leave out TVM's default pipeline (model mode)")
    parser.add_argument("--gemms", action="store_true",
                        help="time the model's GEMMs alone (GOPS) instead of the model")
    args = parser.parse_args()
    try:
        info = get_backend("llvm").make_target(args.mcpu)
        args.isa = args.isa or [info.caps.isa]
        for isa in args.isa:
            isa_target(info, isa)  # refuse an ISA the CPUs lack before compiling anything
    except ValueError as err:
        parser.error(str(err))
    (run_gemms if args.gemms else run_models)(args, info)


if __name__ == "__main__":
    main()
