"""GPU machine: run each prepared artifact and compare its int32 logits with PyTorch's, exactly;
and each DeiT-S GEMM kernel (gemms.so) with cuBLASLt int8 (`torch._int_mm`) followed by the
reference requantize (ivit_tvm.quant.functional), exactly.

    python3 -m benchmarks.gpu.check --out $OUT/check.json [--dry-run]

--dry-run (on a machine without a GPU): everything up to the first CUDA call (manifest,
references, seeded inputs, loading each library), then stop.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np

from .inputs import image_seed, seeded_images, seeded_int8
from .tvm_runtime import CARRY, import_tvm, load_vm


def model_images(entry: dict, batch: int) -> np.ndarray:
    """The seeded float32 images (B, C, H, W) prepare.py computed the references on."""
    cfg = entry["config"]
    shape = (batch, cfg["in_chans"], cfg["img_size"], cfg["img_size"])
    return seeded_images(image_seed(entry["name"], batch), shape)


def check_model(tvm, entry: dict, device) -> list[dict]:
    refs = np.load(CARRY / entry["reference"])
    vm = load_vm(CARRY / entry["file"], device)
    results = []
    for batch in entry["batches"]:
        images = model_images(entry, batch)
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


def gemm_reference(x_q, weight_q, bias_q):
    """(M, N) int8: cuBLASLt's int32 GEMM, then bias and requantize as the model's reference."""
    import torch

    from ivit_tvm.quant import functional as F

    acc = torch._int_mm(x_q, weight_q.t())  # (M, N) int32 = x (M, K) . w (N, K)^T
    acc = (acc.to(torch.int64) + bias_q.to(torch.int64)).clamp(-2**31, 2**31 - 1)  # saturate
    return F.requantize(acc, 1 << 14, 22, bits=8)


def gemm_operands(entry: dict, name: str, index: int):
    """numpy (x (M, K), weight (N, K), bias (N,)) as prepare.gemm_module made them."""
    m, k, n = entry["shapes"][name]
    weight_q = seeded_int8(100 + index, (n, k))
    bias_q = seeded_int8(200 + index, (n,)).astype(np.int32) * 64
    return seeded_int8(entry["input_seed"] + index, (m, k)), weight_q, bias_q


def check_gemms(tvm, entry: dict, device) -> list[dict]:
    import torch

    vm = load_vm(CARRY / entry["file"], device)
    results = []
    for index, name in enumerate(entry["shapes"]):
        x_q, weight_q, bias_q = gemm_operands(entry, name, index)
        got = vm[f"gemm_{name}"](tvm.runtime.tensor(x_q, device)).numpy()
        operands = [torch.from_numpy(a).cuda() for a in (x_q, weight_q, bias_q)]
        expected = gemm_reference(*operands).cpu().numpy()  # (M, N) int8
        diff = got.astype(np.int64) - expected
        results.append({"gemm": name, "shape_mkn": entry["shapes"][name],
                        "bit_exact": bool(got.shape == expected.shape and not diff.any()),
                        "mismatches": int((diff != 0).sum())})
        print(json.dumps(results[-1]), flush=True)
    return results


def dry_run(manifest: dict) -> list[str]:
    """Every step before the first CUDA call; raises on the first that fails. Returns the
    libraries that loaded."""
    tvm = import_tvm()
    loaded = []
    for name, entry in manifest["models"].items():
        if entry.get("status") != "ok":
            print(f"dry run: {name} not prepared: {entry.get('error')}")
            continue
        refs = np.load(CARRY / entry["reference"])
        for batch in entry["batches"]:
            images = model_images(entry, batch)
            assert refs[f"logits_b{batch}"].shape[0] == images.shape[0] == batch
        tvm.runtime.load_module(str(CARRY / entry["file"]))
        loaded.append(name)
        print(f"dry run: {name} loads; references for batches {entry['batches']}", flush=True)
    gemms = manifest.get("gemms", {})
    if gemms.get("status") == "ok":
        tvm.runtime.load_module(str(CARRY / gemms["file"]))
        for index, name in enumerate(gemms["shapes"]):
            gemm_operands(gemms, name, index)
        loaded.append("gemms")
        print(f"dry run: gemms load ({', '.join(gemms['shapes'])})", flush=True)
    return loaded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true",
                        help="stop before the first CUDA call (no GPU needed)")
    args = parser.parse_args(argv)
    manifest = json.loads((CARRY / "manifest.json").read_text())
    if args.dry_run:
        args.out.write_text(json.dumps({"dry_run": True, "loaded": dry_run(manifest)}))
        return 0
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
    gemms = manifest.get("gemms", {})
    if gemms.get("status") == "ok":
        try:
            report["gemms"] = check_gemms(tvm, gemms, device)
        except Exception:
            report["errors"]["gemms"] = traceback.format_exc()[-4000:]
            print(report["errors"]["gemms"], flush=True)
    else:
        report["skipped"]["gemms"] = gemms.get("error", "not prepared")
    save()
    failed = report["errors"] or not all(
        r["bit_exact"] for r in report["results"] + report.get("gemms", []))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
