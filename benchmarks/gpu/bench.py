"""GPU machine: latency of ivit-tvm (int8, TVM runtime) vs PyTorch FP16/BF16 (cuBLAS), DeiT-S
and Swin-T, and each DeiT-S GEMM kernel vs cuBLASLt int8 (`torch._int_mm`).

    python3 -m benchmarks.gpu.bench --out $OUT/bench.json [--batches 1 8 32 64] [--dry-run]

Weights are random (latency does not depend on their values). Each engine/batch: warm-up,
then `repeats` timed runs of `number` calls each (number sized to ~0.1 s), synchronized before
and after; the median per-call time is reported. Engines of one model and batch are measured
in alternating rounds (A B C, C B A, ...) so clock drift hits them alike. Results are written
after every measurement, so a stage that times out keeps what it measured. --dry-run stops
before the first CUDA call (builds the timm models and the inputs on the CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

from .check import gemm_operands
from .tvm_runtime import CARRY, import_tvm, load_vm

# artifact name -> timm model name (random weights)
MODELS = {"deit_small": "deit_small_patch16_224", "swin_tiny": "swin_tiny_patch4_window7_224"}
TORCH_DTYPES = ("fp16", "bf16")
INT8_TC_PEAK_TOPS = {"H200": 1979, "H100": 1979, "A100": 624}  # dense int8 tensor-core peak


def calibrate(call, sync, target_s: float) -> int:
    """Calls per timed run so that one run lasts about target_s."""
    for _ in range(3):
        call()
    sync()
    started = time.perf_counter()
    call()
    sync()
    single = max(time.perf_counter() - started, 1e-6)
    return max(1, min(500, int(target_s / single)))


def timed(call, sync, number: int) -> float:
    """Milliseconds per call over `number` calls."""
    sync()
    started = time.perf_counter()
    for _ in range(number):
        call()
    sync()
    return (time.perf_counter() - started) / number * 1e3


def interleaved(calls: dict, sync, repeats: int, target_s: float = 0.1) -> dict:
    """{name: timing} for callables measured in alternating rounds (ABC, CBA, ...)."""
    numbers = {name: calibrate(call, sync, target_s) for name, call in calls.items()}
    samples = {name: [] for name in calls}
    order = list(calls)
    for round_index in range(repeats):
        for name in order if round_index % 2 == 0 else reversed(order):
            samples[name].append(timed(calls[name], sync, numbers[name]))
    return {name: {"median_ms": round(statistics.median(s), 4), "min_ms": round(min(s), 4),
                   "number": numbers[name], "repeats": repeats} for name, s in samples.items()}


def tvm_model(tvm, device, entry: dict):
    """A callable factory: batch -> (call running the artifact on one seeded batch)."""
    import numpy as np

    vm = load_vm(CARRY / entry["file"], device)
    main, cfg = vm["main"], entry["config"]

    def for_batch(batch: int):
        images = np.random.default_rng(0).standard_normal(
            (batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"]), dtype=np.float32)
        x = tvm.runtime.tensor(images, device)
        return lambda: main(x)

    return for_batch


def torch_model(timm_name: str, dtype_name: str, dry_run: bool):
    import timm
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    device = "cpu" if dry_run else "cuda"
    model = timm.create_model(timm_name, pretrained=False).eval().to(device, dtype)

    def for_batch(batch: int):
        x = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)

        def call():
            with torch.inference_mode():
                return model(x)

        return call

    return for_batch


def bench_models(args, report, save, tvm, device, sync) -> None:
    manifest = json.loads((CARRY / "manifest.json").read_text())
    for name, timm_name in MODELS.items():
        entry = manifest["models"].get(name, {})
        if entry.get("status") == "not carried":  # in another carry (prepare.SECOND_CARRY)
            report.setdefault("skipped", {})[name] = entry["error"]
            print(f"{name}: skipped, {entry['error']}", flush=True)
            continue
        engines = {}
        try:
            if entry.get("status") != "ok":
                raise RuntimeError(f"{name} artifact not prepared: {entry.get('error')}")
            if args.dry_run:  # loading the VM is the first CUDA call: check the file only
                (CARRY / entry["file"]).stat()
                engines["ivit-tvm-int8"] = None
            else:
                engines["ivit-tvm-int8"] = tvm_model(tvm, device, entry)
        except Exception:
            report["errors"][f"{name}/ivit-tvm-int8"] = traceback.format_exc()[-3000:]
        for dtype_name in args.torch_dtypes:
            try:
                engines[f"torch-{dtype_name}"] = torch_model(timm_name, dtype_name, args.dry_run)
            except Exception:
                report["errors"][f"{name}/torch-{dtype_name}"] = traceback.format_exc()[-3000:]
        if args.dry_run:
            print(f"dry run: {name}: engines ready: {sorted(engines)}", flush=True)
            continue
        for batch in args.batches:
            try:
                calls = {engine: make(batch) for engine, make in engines.items()}
                for engine, timing in interleaved(calls, sync, args.repeats).items():
                    row = {"model": name, "engine": engine, "batch": batch, **timing,
                           "images_per_s": round(batch / timing["median_ms"] * 1e3, 1)}
                    report["results"].append(row)
                    print(json.dumps(row), flush=True)
            except Exception:
                report["errors"][f"{name}/b{batch}"] = traceback.format_exc()[-3000:]
            save()


def bench_gemms(args, report, save, tvm, device, sync) -> None:
    """Each DeiT-S GEMM: ivit-tvm's kernel (with its fused requantize) vs torch._int_mm."""
    import torch

    manifest = json.loads((CARRY / "manifest.json").read_text())
    entry = manifest.get("gemms", {})
    if entry.get("status") != "ok":
        report["errors"]["gemms"] = f"not prepared: {entry.get('error')}"
        return
    vm = None if args.dry_run else load_vm(CARRY / entry["file"], device)
    peak = next((tops for gpu, tops in INT8_TC_PEAK_TOPS.items()
                 if gpu in report.get("torch", {}).get("device", "")), None)
    for index, (name, (m, k, n)) in enumerate(entry["shapes"].items()):
        x_q, weight_q, _ = gemm_operands(entry, name, index)  # (M, K), (N, K) int8
        if args.dry_run:
            print(f"dry run: gemm {name} operands {x_q.shape} x {weight_q.shape}", flush=True)
            continue
        x_tvm = tvm.runtime.tensor(x_q, device)
        x_torch, w_torch = torch.from_numpy(x_q).cuda(), torch.from_numpy(weight_q).cuda()
        gemm = vm[f"gemm_{name}"]
        calls = {"ivit-tvm": lambda g=gemm, x=x_tvm: g(x),
                 "cublaslt-int_mm": lambda x=x_torch, w=w_torch: torch._int_mm(x, w.t())}
        for engine, timing in interleaved(calls, sync, args.repeats).items():
            tops = 2 * m * n * k / (timing["median_ms"] * 1e-3) / 1e12
            row = {"gemm": name, "m": m, "k": k, "n": n, "engine": engine, **timing,
                   "tops": round(tops, 1),
                   "peak_fraction": round(tops / peak, 3) if peak else None}
            report["gemms"].append(row)
            print(json.dumps(row), flush=True)
        save()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=6, help="alternating rounds per batch")
    parser.add_argument("--torch-dtypes", nargs="*", default=list(TORCH_DTYPES),
                        choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--no-gemms", dest="gemms", action="store_false")
    parser.add_argument("--dry-run", action="store_true",
                        help="stop before the first CUDA call (no GPU needed)")
    args = parser.parse_args(argv)
    report = {"models": MODELS, "batches": args.batches, "results": [], "gemms": [],
              "errors": {}, "dry_run": args.dry_run}

    def save():
        args.out.write_text(json.dumps(report, indent=2))

    tvm = import_tvm()
    device, sync = None, None
    if not args.dry_run:
        import torch

        report["torch"] = {"version": torch.__version__, "device": torch.cuda.get_device_name(0),
                           "allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        device = tvm.cuda(0)

        def sync():
            device.sync()
            torch.cuda.synchronize()

    for stage in (bench_models, *((bench_gemms,) if args.gemms else ())):
        try:
            stage(args, report, save, tvm, device, sync)
        except Exception:  # the other stage still runs
            report["errors"][stage.__name__] = traceback.format_exc()[-4000:]
            print(report["errors"][stage.__name__], flush=True)
        save()
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
