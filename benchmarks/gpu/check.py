"""GPU machine: run each prepared artifact and compare its int32 logits with PyTorch's, exactly.

    python3 -m benchmarks.gpu.check --out $OUT/check.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np

from .tvm_runtime import CARRY, import_tvm, load_vm


def check_model(tvm, entry: dict, device) -> list[dict]:
    refs = np.load(CARRY / entry["reference"])
    vm = load_vm(CARRY / entry["file"], device)
    results = []
    for batch in entry["batches"]:
        images = refs[f"images_b{batch}"]
        expected = refs[f"logits_b{batch}"]  # (B, classes) int32
        started = time.perf_counter()
        got = vm["main"](tvm.runtime.tensor(images, device)).numpy()
        elapsed_ms = (time.perf_counter() - started) * 1e3
        same_shape = got.shape == expected.shape
        diff = np.abs(got.astype(np.int64) - expected) if same_shape else None
        results.append({
            "model": entry["name"], "batch": batch, "dtype": str(got.dtype),
            "bit_exact": bool(same_shape and got.dtype == np.int32 and not diff.any()),
            "mismatches": int((diff != 0).sum()) if same_shape else None,
            "max_abs_diff": int(diff.max()) if same_shape else None,
            "argmax_agree": float((got.argmax(-1) == expected.argmax(-1)).mean())
            if same_shape else None,
            "first_call_ms": round(elapsed_ms, 2),
        })
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    manifest = json.loads((CARRY / "manifest.json").read_text())
    report = {"results": [], "skipped": {}, "errors": {}}

    def save():
        args.out.write_text(json.dumps(report, indent=2))

    try:
        tvm = import_tvm()
        device = tvm.cuda(0)
        if not device.exist:
            raise RuntimeError("TVM sees no CUDA device 0")
        report["device"] = {"name": device.device_name, "compute_version": device.compute_version}
    except Exception:
        report["errors"]["tvm runtime"] = traceback.format_exc()[-4000:]
        save()
        raise
    for name, entry in manifest["models"].items():
        if entry.get("status") != "ok":
            report["skipped"][name] = entry.get("error", "not prepared")
            continue
        try:
            report["results"].extend(check_model(tvm, entry, device))
        except Exception:  # keep checking the other models
            report["errors"][name] = traceback.format_exc()[-4000:]
            print(report["errors"][name], flush=True)
        save()
    save()
    failed = report["errors"] or not all(r["bit_exact"] for r in report["results"])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
