"""Compile time and artifact size of full-size models, per target (issue: ivit-compile).

    python -m benchmarks.compile_stats deit_small swin_tiny --target llvm --target cuda

Models are randomly initialised and calibrated on random images (compile cost does not
depend on weight values). Prints a Markdown table and writes JSON next to it.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import click

from ivit_tvm.compile import compile_model, make_target
from ivit_tvm.models import model_config
from ivit_tvm.ptq import random_calibrated


@click.command()
@click.argument("models", nargs=-1, required=True)
@click.option("--target", "targets", multiple=True, default=["llvm"], show_default=True,
              help="llvm or cuda (repeatable).")
@click.option("--arch", default="sm_90", show_default=True, help="CUDA arch for --target cuda.")
@click.option("--json-out", type=click.Path(path_type=Path), default=None,
              help="Write the rows as JSON here.")
def main(models, targets, arch, json_out):
    rows = []
    for name in models:
        model = random_calibrated(model_config(name))
        for kind in targets:
            target = make_target(kind, arch=arch if kind == "cuda" else None)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                report = compile_model(model, target, Path(tmp) / "out", progress=False)
                wall = time.perf_counter() - start
            rows.append({"model": name, "target": kind, "arch": arch if kind == "cuda" else "",
                         "compile_s": round(wall, 1), "stages_s": report.seconds,
                         "artifact_mib": round(report.library_bytes / 2**20, 2),
                         "contents": report.contents})
    click.echo("| model | target | compile (s) | artifact (MiB) |\n|---|---|---|---|")
    for r in rows:
        click.echo(f"| {r['model']} | {r['target']} {r['arch']} | {r['compile_s']} | "
                   f"{r['artifact_mib']} |")
    if json_out:
        json_out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
