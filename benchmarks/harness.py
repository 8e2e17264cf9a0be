"""Latency and memory of one engine on one model, measured in a fresh process per engine.

    python -m benchmarks.harness TASK.json RESULT.json     (run_isolated writes TASK.json)

Timing: a few warm-up calls, then repeated samples (each sample one call, or several when a
call is shorter than MIN_SAMPLE_S), as many as `repeats` allows within `budget_s` but at least
MIN_REPEATS; the median and the interquartile range of the per-call times are reported.
Memory (Linux): the process's peak resident set (VmHWM) while the engine loads and runs,
both in total and above what the process held after importing the engine's libraries; the
peak is reset (/proc/self/clear_refs) after those imports, and batches run in increasing
order, so each batch's figure is the peak of loading plus running up to that batch.
Other work on the machine: while a measuring process runs, the CPU used by every process
outside it is sampled (`OtherLoad`); `wait_for_quiet` can hold a measurement back until the
machine is idle.
"""

from __future__ import annotations

import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

MIN_REPEATS = 3
MIN_SAMPLE_S = 0.02  # shorter calls are timed in groups, so timer overhead stays negligible
STARTUP_S = 120  # allowance for a measuring process's imports and model loading
QUIET_CORES = 0.3  # the machine counts as idle below this many busy cores


def measure(call: Callable[[], Any], batch: int, warmup: int, repeats: int,
            budget_s: float) -> dict:
    """Per-call latency statistics of `call` (which runs `batch` images) in milliseconds."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    call()
    single = max(time.perf_counter() - start, 1e-9)
    number = max(1, math.ceil(MIN_SAMPLE_S / single))
    repeats = max(MIN_REPEATS, min(repeats, int(budget_s / (single * number))))
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(number):
                call()
            samples.append((time.perf_counter() - start) / number * 1e3)
    finally:
        gc.enable()
    p25, median, p75 = statistics.quantiles(samples, n=4, method="inclusive")
    return {"median_ms": median, "p25_ms": p25, "p75_ms": p75, "iqr_ms": p75 - p25,
            "min_ms": min(samples), "max_ms": max(samples), "repeats": repeats,
            "calls_per_sample": number, "images_per_s": batch / median * 1e3}


def rss_mib(field: str = "VmRSS") -> float | None:
    """The process's resident set (VmRSS) or its peak (VmHWM) in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Start VmHWM again from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def run_task(task: dict) -> dict:
    """Load the engine and time every batch of `task` (this process only does that)."""
    import numpy as np

    from .engines import Settings, Workload, get_engine

    engine = get_engine(task["engine"])
    workload = Workload(**task["workload"])
    settings = Settings(**task["settings"])
    engine.import_runtime()
    base = rss_mib()
    peak_reset = reset_peak_rss()
    result: dict = {"rss_after_imports_mib": base, "batches": {}}
    start = time.perf_counter()
    bind = engine.load(task["prepared"], workload, settings)
    result["load_s"] = time.perf_counter() - start
    for batch in sorted(task["batches"]):
        try:
            images = np.load(task["inputs"][str(batch)])
            call = bind(images)
            row = measure(call, batch, **task["timing"])
            row["output_shape"] = list(getattr(call(), "shape", ()))
            peak = rss_mib("VmHWM")
            row["peak_rss_mib"] = peak
            row["engine_rss_mib"] = peak - base if peak_reset and peak and base else None
            row["status"] = "ok"
        except Exception as err:  # one batch failing (e.g. out of memory) keeps the others
            row = {"status": "failed", "reason": one_line(err)}
            traceback.print_exc()
        result["batches"][str(batch)] = row
    return result


class OtherLoad:
    """Samples, once a second, the CPU (in cores) used by processes other than this one and
    `exclude`'s process tree, while a measurement runs."""

    def __init__(self, exclude: int):
        import psutil

        self.psutil, self.exclude, self.samples = psutil, exclude, []
        self.processes: dict[int, object] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _ours(self) -> set[int]:
        ours = {os.getpid(), self.exclude}
        try:
            ours |= {p.pid for p in self.psutil.Process(self.exclude).children(recursive=True)}
        except self.psutil.Error:
            pass
        return ours

    def _sample(self) -> float:
        ours, busy = self._ours(), 0.0
        for proc in self.psutil.process_iter():
            if proc.pid in ours:
                continue
            proc = self.processes.setdefault(proc.pid, proc)
            try:
                busy += proc.cpu_percent(None) / 100  # since the previous sample
            except self.psutil.Error:
                pass
        return busy

    def _run(self) -> None:
        self._sample()
        while not self.stop.wait(1.0):
            self.samples.append(self._sample())

    def __enter__(self) -> OtherLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict:
        samples = self.samples or [0.0]
        return {"mean_cores": round(statistics.mean(samples), 2),
                "max_cores": round(max(samples), 2), "samples": len(self.samples)}


def machine_busy_cores(interval_s: float = 1.0) -> float:
    """CPU cores in use on the whole machine over `interval_s` (this process is idle)."""
    import psutil

    return psutil.cpu_percent(interval_s) / 100 * (psutil.cpu_count() or 1)


def wait_for_quiet(max_wait_s: float, busy_cores: float = QUIET_CORES) -> float:
    """Wait (at most `max_wait_s`) until the machine is idle; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s and machine_busy_cores() > busy_cores:
        time.sleep(4.0)
    return time.perf_counter() - start


def run_isolated(task: dict, folder: Path, env: dict[str, str]) -> dict:
    """Run `task` in a fresh Python process; its result (with the CPU other processes used
    meanwhile), or a failure for every batch."""
    folder.mkdir(parents=True, exist_ok=True)
    task_file, result_file = folder / "task.json", folder / "result.json"
    task_file.write_text(json.dumps(task, indent=1))
    result_file.unlink(missing_ok=True)
    timing = task["timing"]
    timeout = STARTUP_S + len(task["batches"]) * (2 * timing["budget_s"] + 60)
    command = [sys.executable, "-m", "ivit_tvm.benchmarks.harness", str(task_file),
               str(result_file)]
    with subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc, OtherLoad(proc.pid) as load:
        try:
            _out, stderr = proc.communicate(timeout=timeout)
            reason = _last_line(stderr) or f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            reason = f"timed out after {timeout:.0f} s"
    if result_file.is_file():
        return {**json.loads(result_file.read_text()), "other_load": load.summary()}
    failed = {"status": "failed", "reason": f"measuring process failed: {reason}"}
    return {"batches": {str(b): dict(failed) for b in task["batches"]}}


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())[:300]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def main(argv: list[str] | None = None) -> int:
    task_file, result_file = (argv or sys.argv[1:])[:2]
    result = run_task(json.loads(Path(task_file).read_text()))
    Path(result_file).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
