"""GPU machine: merge env/check/bench JSON under an output folder into results.{json,md}.

    python3 -m benchmarks.gpu.report $OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAGES = ("env", "check", "bench")


def load(folder: Path, stage: str) -> dict | None:
    path = folder / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return {"missing": f"{path.name}: {error}"}


def markdown(results: dict) -> str:
    lines = ["# ivit-tvm on the GPU machine", ""]
    env = results.get("env") or {}
    if env.get("gpu"):
        lines += [f"GPU: {env['gpu']}; driver {env.get('driver', '?')}; "
                  f"Python {env.get('python', '?')}; torch {env.get('torch', '?')}", ""]

    check = results.get("check") or {}
    lines += ["## Correctness (int32 logits vs PyTorch forward_integer)", ""]
    if check.get("results"):
        lines += ["| model | batch | bit-exact | mismatches | max abs diff | argmax agree |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in check["results"]:
            lines.append(f"| {row['model']} | {row['batch']} | {row['bit_exact']} | "
                         f"{row['mismatches']} | {row['max_abs_diff']} | {row['argmax_agree']} |")
    for name, reason in {**check.get("skipped", {}), **check.get("errors", {})}.items():
        lines.append(f"- {name}: {reason.strip().splitlines()[-1] if reason else '?'}")
    if check.get("missing"):
        lines.append(f"- no check results ({check['missing']})")
    for row in check.get("gemms", []):
        lines.append(f"- GEMM {row['gemm']} {row['shape_mkn']} vs torch._int_mm + requantize: "
                     f"bit-exact {row['bit_exact']} ({row['mismatches']} mismatches)")
    lines.append("")

    bench = results.get("bench") or {}
    lines += _latency(bench.get("results", [])) + _gemms(bench.get("gemms", []))
    if bench.get("torch"):
        lines += [f"torch: {bench['torch']}", ""]
    for name, error in bench.get("errors", {}).items():
        lines.append(f"- {name} failed: {error.strip().splitlines()[-1]}")
    for name, reason in bench.get("skipped", {}).items():  # e.g. in another carry
        lines.append(f"- {name} not timed: {reason}")
    if bench.get("missing"):
        lines.append(f"- no benchmark results ({bench['missing']})")
    return "\n".join(lines) + "\n"


def _latency(rows: list[dict]) -> list[str]:
    """Per model: median ms (images/s) per engine and batch, and ivit-tvm's speedup."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        batches = sorted({row["batch"] for row in mine})
        engines = list(dict.fromkeys(row["engine"] for row in mine))
        table = {(row["engine"], row["batch"]): row for row in mine}
        lines += [f"## Latency: {model} (median ms per call, images/s; rounds alternate)", "",
                  "| engine | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "| --- |" + " --- |" * len(batches)]
        for engine in engines:
            cells = [_cell(table.get((engine, b))) for b in batches]
            lines.append(f"| {engine} | " + " | ".join(cells) + " |")
        for engine in engines:
            if engine == "ivit-tvm-int8":
                continue
            ratios = [_ratio(table.get((engine, b)), table.get(("ivit-tvm-int8", b)))
                      for b in batches]
            lines.append(f"| ivit-tvm speedup vs {engine} | " + " | ".join(ratios) + " |")
        lines.append("")
    return lines


def _gemms(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## DeiT-S GEMMs: ivit-tvm (with its fused requantize) vs cuBLASLt int8", "",
             "| GEMM | M x K x N | engine | median ms | TOPS | of int8 TC peak |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        peak = "-" if row.get("peak_fraction") is None else f"{row['peak_fraction']:.0%}"
        lines.append(f"| {row['gemm']} | {row['m']} x {row['k']} x {row['n']} | "
                     f"{row['engine']} | {row['median_ms']:.4f} | {row['tops']} | {peak} |")
    return lines + [""]


def _ratio(other: dict | None, mine: dict | None) -> str:
    if other is None or mine is None:
        return "-"
    return f"{other['median_ms'] / mine['median_ms']:.2f}x"


def _cell(row: dict | None) -> str:
    return "-" if row is None else f"{row['median_ms']:.3f} ({row['images_per_s']:.0f})"


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:])[0])
    results = {stage: load(folder, stage) for stage in STAGES}
    (folder / "results.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (folder / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
