"""ivit-bench: latency of ivit-tvm INT8 against float and INT8 baselines (code in benchmarks/).

    ivit-bench --quick                          # a tiny DeiT, batch 1, CPU engines: ~1 minute
    ivit-bench -m deit_tiny -m deit_small -m swin_tiny -b 1 -b 8 --wait-quiet 300
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from pathlib import Path

import click

from ivit_tvm.cli.common import CONTEXT, note, reports_errors

DEFAULT_MODELS = ("deit_tiny", "deit_small", "deit_base", "vit_base", "swin_tiny", "swin_small")
QUICK_MODEL = "deit_tiny:img_size=32,patch_size=8,depth=2,num_classes=10"
QUICK_TIMING = {"warmup": 1, "repeats": 5, "budget_s": 1.0}
CPU_BATCHES, GPU_BATCHES = (1, 8), (1, 8, 32, 64)
RESULTS_ROOT = Path("benchmark-results")  # relative to the current directory


@click.command("ivit-bench", context_settings=CONTEXT)
@click.option("-m", "--model", "models", multiple=True, metavar="NAME[:FIELD=VALUE,...]",
              help="Model to benchmark (repeatable), e.g. deit_small or "
                   "swin_tiny:img_size=112,depths=2/2/2/2 (tuples with '/'). "
                   f"[default: {', '.join(DEFAULT_MODELS)}; --quick: a 2-block DeiT-T at 32 px]")
@click.option("-b", "--batch", "batches", multiple=True, type=click.IntRange(min=1),
              help="Batch size (repeatable). [default: 1, 8 on CPU; 1, 8, 32, 64 with a CUDA "
                   "GPU; --quick: 1]")
@click.option("-e", "--engine", "engines", multiple=True,
              help="Engine (repeatable): ivit-tvm, tvm-fp32, torch-fp32, ort-fp32, ort-int8, "
                   "ov-fp32, ov-int8 (OpenVINO; INT8: NNCF PTQ), torch-fp16, torch-bf16, "
                   "trt-fp16, trt-int8. [default: all; those that "
                   "cannot run here are listed as skipped]")
@click.option("--quick", is_flag=True,
              help="A smoke run: the tiny model, batch 1, 1 warm-up, at most 5 rounds or 1 s.")
@click.option("--warmup", type=click.IntRange(min=0), help="Warm-up calls. [default: 3]")
@click.option("--repeats", type=click.IntRange(min=3),
              help="Most timed rounds per batch (one sample of every engine each, in "
                   "alternating order). [default: 30]")
@click.option("--budget-s", type=click.FloatRange(min=0.0),
              help="Seconds of the slowest engine's timing per batch, within which fewer "
                   "rounds are taken (at least 3). [default: 8]")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads of every engine. [default: the cores this process may use]")
@click.option("--mcpu", help="LLVM CPU of the TVM targets. [default: this machine's]")
@click.option("--wait-quiet", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              metavar="SECONDS",
              help="Before each batch's rounds, wait up to SECONDS for the machine to be "
                   "idle (rounds where other processes used the CPU are flagged either way).")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path),
              default=RESULTS_ROOT, show_default=True,
              help="Results go to RESULTS_DIR/<machine>-<date>[-quick]/ (relative paths from "
                   "the current directory; the project's committed runs live in "
                   "benchmarks/results/).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Keep checkpoints, ONNX files and compiled libraries here. [default: a "
                   "temporary folder, removed at the end]")
@click.option("--profile", is_flag=True,
              help="Also profile each model's ivit-tvm artifact per kernel kind at every batch "
                   "(as ivit-profile does, beside ov-int8's per-layer counters when it ran), "
                   "into profile-MODEL.md and .json in the results folder.")
@reports_errors
def bench_cmd(models, batches, engines, quick, warmup, repeats, budget_s, threads, mcpu,
              wait_quiet, results_dir, work_dir, profile) -> None:
    """Benchmark ivit-tvm INT8 against TVM FP32, PyTorch, ONNX Runtime, OpenVINO (and, on a GPU,
    PyTorch FP16/BF16 and TensorRT), all loaded and warmed up first, then timed in alternating
    rounds: median latency, spread, images/s, per-round ratio to ivit-tvm (median and spread),
    peak memory and deployed weight size. Prints a Markdown table and writes it with the JSON
    and a latency plot into the results folder.
    """
    from ivit_tvm.benchmarks.engines import ENGINES, Settings
    from ivit_tvm.benchmarks.engines.base import cuda_missing
    from ivit_tvm.benchmarks.machine import cores, machine_slug
    from ivit_tvm.benchmarks.report import markdown, write_results
    from ivit_tvm.benchmarks.run import Plan, run_benchmark
    from ivit_tvm.benchmarks.workload import parse_model
    from ivit_tvm.schedules.targets import host_cpu

    specs = [parse_model(m) for m in (models or ((QUICK_MODEL,) if quick else DEFAULT_MODELS))]
    keys = list(engines or ENGINES)
    unknown = [k for k in keys if k not in ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}: choose from {', '.join(ENGINES)}")
    default_batches = (1,) if quick else CPU_BATCHES if cuda_missing() else GPU_BATCHES
    batch_list = sorted(set(batches or default_batches))
    timing = dict(QUICK_TIMING) if quick else {"warmup": 3, "repeats": 30, "budget_s": 8.0}
    timing.update({k: v for k, v in (("warmup", warmup), ("repeats", repeats),
                                     ("budget_s", budget_s)) if v is not None})
    settings = Settings(threads=threads or cores(), mcpu=mcpu or host_cpu(),
                        max_batch=max(batch_list))
    plan = Plan(specs, batch_list, keys, settings, timing, quick=quick, wait_quiet_s=wait_quiet)
    folder = results_dir / f"{machine_slug()}-{datetime.date.today().isoformat()}" \
                           f"{'-quick' if quick else ''}"
    if profile and "ivit-tvm" not in keys:
        raise ValueError("--profile profiles the ivit-tvm engine's artifacts: add -e ivit-tvm")
    work = work_dir or Path(tempfile.mkdtemp(prefix="ivit-bench-"))
    try:
        results = run_benchmark(plan, work)
        if profile:
            from ivit_tvm.benchmarks.profile import profile_bench_artifacts

            profiles = profile_bench_artifacts(specs, batch_list, settings.threads, work,
                                               folder, timing["warmup"],
                                               min(timing["repeats"], 20))
    finally:
        if work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    paths = write_results(results, folder)
    click.echo(markdown(results), nl=False)
    note(f"wrote {', '.join(str(p) for p in paths.values())}")
    if profile:
        note(f"wrote {', '.join(map(str, profiles))}")
