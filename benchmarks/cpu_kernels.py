"""Latency of the llvm build: TVM's default pipeline (naive loops) against cpu_pipeline.

    TVM_NUM_THREADS=2 python -m ivit_tvm.benchmarks.cpu_kernels --model deit_small --batch 1 8

Builds one symbolic-batch artifact per pipeline from a randomly initialized, calibrated model
(latency does not depend on the weights), checks the logits against forward_integer, times
the runs interleaved (the minimum and median of --repeats), and splits the scheduled run by
kernel kind with the VM's instrument hook (which adds a few microseconds per call). Other
processes on the machine change the numbers a lot: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch
import tvm
from ivit_tvm.schedules.backend import get_backend
from ivit_tvm.schedules.cpu.pipeline import cpu_pipeline
from tvm import relax

from ivit_tvm.frontend import from_model
from ivit_tvm.models import model_config
from ivit_tvm.ptq import random_calibrated

KINDS = ("dense", "batch_matmul", "layernorm", "shiftmax", "shiftgelu", "requantize",
         "quantize_input", "vm.builtin")


def kind_of(symbol: str) -> str:
    return next((kind for kind in KINDS if kind in symbol), "copies (transpose, slice)")


def kernel_shares(executable, images) -> dict[str, float]:
    """Seconds per kernel kind in one instrumented run of main_int8's calls (own VM: the
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deit_small")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--mcpu", default=tvm.target.codegen.llvm_get_system_cpu())
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    model = random_calibrated(model_config(args.model, img_size=args.img_size))
    mod = from_model(model).mod
    target = tvm.target.Target({"kind": "llvm", "mcpu": args.mcpu})
    pipelines = {"scheduled": cpu_pipeline(get_backend("llvm").resolve(target))}
    if not args.skip_naive:
        pipelines = {"naive": relax.get_default_pipeline(target), **pipelines}
    executables, vms = {}, {}
    for name, pipeline in pipelines.items():
        start = time.perf_counter()
        executables[name] = tvm.compile(mod, target=target, relax_pipeline=pipeline)
        print(f"compile {name} ({args.mcpu}): {time.perf_counter() - start:.1f} s")
        vms[name] = relax.VirtualMachine(executables[name], tvm.cpu())

    for batch in args.batch:
        x = torch.randn(batch, 3, args.img_size, args.img_size)
        images = tvm.runtime.tensor(x.numpy())
        reference = model.forward_integer(x)[0].numpy()
        times = {name: [] for name in vms}
        for name, vm in vms.items():
            exact = np.array_equal(vm["main"](images).numpy(), reference)
            print(f"batch {batch} {name}: bit-exact {exact}")
        for _ in range(args.repeats):
            for name, vm in vms.items():
                start = time.perf_counter()
                vm["main"](images)
                times[name].append(time.perf_counter() - start)
        for name, seconds in times.items():
            print(f"batch {batch} {name}: min {min(seconds) * 1e3:.2f} ms, "
                  f"median {np.median(seconds) * 1e3:.2f} ms")
        shares = kernel_shares(executables["scheduled"], images)
        total = sum(shares.values())
        for kind, seconds in sorted(shares.items(), key=lambda item: -item[1]):
            print(f"  {kind:28s} {seconds * 1e3:8.2f} ms  {100 * seconds / total:5.1f}%")


if __name__ == "__main__":
    main()
