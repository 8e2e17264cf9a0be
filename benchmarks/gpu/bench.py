"""GPU machine: latency of ivit-tvm (int8, TVM runtime) vs PyTorch FP32/FP16 eager, DeiT-S.

    python3 -m benchmarks.gpu.bench --out $OUT/bench.json [--batches 1 8 32 64]

Weights are random (latency does not depend on their values). Each variant/batch: warm-up,
then `repeats` timed runs of `number` calls each (number sized to ~0.2 s), synchronized
before and after; the median per-call time is reported. Results are written after every
measurement, so a stage that times out keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

from .tvm_runtime import CARRY, import_tvm, load_vm

TVM_MODEL = "deit_small"
TIMM_MODEL = "deit_small_patch16_224"


def measure(call, sync, repeats: int, target_s: float = 0.2, budget_s: float = 20.0) -> dict:
    """Median/min per-call milliseconds of `call()` (sync() waits for the device)."""
    for _ in range(3):
        call()
    sync()
    started = time.perf_counter()
    call()
    sync()
    single = max(time.perf_counter() - started, 1e-6)
    number = max(1, min(200, int(target_s / single)))
    repeats = max(2, min(repeats, int(budget_s / (single * number)) or 2))
    samples = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        for _ in range(number):
            call()
        sync()
        samples.append((time.perf_counter() - started) / number * 1e3)
    return {"median_ms": round(statistics.median(samples), 4), "min_ms": round(min(samples), 4),
            "number": number, "repeats": repeats}


def tvm_variant(batches, repeats):
    import numpy as np

    tvm = import_tvm()
    manifest = json.loads((CARRY / "manifest.json").read_text())
    entry = manifest["models"][TVM_MODEL]
    if entry.get("status") != "ok":
        raise RuntimeError(f"{TVM_MODEL} artifact not prepared: {entry.get('error')}")
    device = tvm.cuda(0)
    vm = load_vm(CARRY / entry["file"], device)
    cfg = entry["config"]
    main = vm["main"]
    for batch in batches:
        images = np.random.default_rng(0).standard_normal(
            (batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"]), dtype=np.float32)
        x = tvm.runtime.tensor(images, device)
        yield batch, measure(lambda x=x: main(x), device.sync, repeats)


def torch_variant(dtype_name, batches, repeats):
    import timm
    import torch

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    model = timm.create_model(TIMM_MODEL, pretrained=False).eval().to("cuda", dtype)
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)
        with torch.inference_mode():
            yield batch, measure(lambda x=x: model(x), torch.cuda.synchronize, repeats)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32, 64])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", nargs="*", default=["ivit-tvm-int8", "torch-fp32",
                                                         "torch-fp16"])
    args = parser.parse_args(argv)
    report = {"model": "DeiT-S (224x224, patch 16, dim 384, depth 12, 6 heads)",
              "batches": args.batches, "results": [], "errors": {}}
    try:
        import torch

        report["torch"] = {"version": torch.__version__, "device": torch.cuda.get_device_name(0),
                           "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                           "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    except Exception:
        report["errors"]["torch"] = traceback.format_exc()[-2000:]

    variants = {
        "ivit-tvm-int8": lambda: tvm_variant(args.batches, args.repeats),
        "torch-fp32": lambda: torch_variant("fp32", args.batches, args.repeats),
        "torch-fp16": lambda: torch_variant("fp16", args.batches, args.repeats),
    }
    for name in args.variants:
        try:
            for batch, timing in variants[name]():
                row = {"variant": name, "batch": batch, **timing,
                       "images_per_s": round(batch / timing["median_ms"] * 1e3, 1)}
                report["results"].append(row)
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(report, indent=2))
        except Exception:  # the other variants still run
            report["errors"][name] = traceback.format_exc()[-4000:]
            print(report["errors"][name], flush=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
