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
    lines.append("")

    bench = results.get("bench") or {}
    lines += [f"## Latency: {bench.get('model', 'DeiT-S')}", ""]
    rows = bench.get("results", [])
    if rows:
        batches = sorted({row["batch"] for row in rows})
        variants = list(dict.fromkeys(row["variant"] for row in rows))
        table = {(row["variant"], row["batch"]): row for row in rows}
        lines += ["median ms per call (images/s)", "",
                  "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
                  "| --- |" + " --- |" * len(batches)]
        for variant in variants:
            cells = [_cell(table.get((variant, b))) for b in batches]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        if bench.get("torch"):
            lines += ["", f"torch: {bench['torch']}"]
    for name, error in bench.get("errors", {}).items():
        lines.append(f"- {name} failed: {error.strip().splitlines()[-1]}")
    if bench.get("missing"):
        lines.append(f"- no benchmark results ({bench['missing']})")
    return "\n".join(lines) + "\n"


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
