"""Latency and memory of engines measured side by side, one measuring process per engine.

    python -m ivit_tvm.benchmarks.harness TASK.json        (a `Worker` starts it)

All engines' processes are started and warmed up first (one after another), then timed in
alternating rounds: every engine takes one sample per round, in the order `round_orders` gives
(ABCD, DCBA, ABCD, ...), so a drift of the machine's speed hits all engines alike, and each
engine's latency is also given as its ratio to the reference engine's in the same round
(`round_ratios`), summarized by the median and spread of those per-round ratios.

Measuring process (`serve`): loads the engine, then for each batch, in increasing order, binds
the saved inputs, runs the warm-up calls, times one call to choose how many calls make one
sample (so a sample lasts at least MIN_SAMPLE_S) and reads its memory; it reports all that in
one "ready" message, then answers each request {"batch": B} with one sample's per-call time
(garbage collection off) until {"quit": true}. Protocol: one JSON line per message on the
process's original stdout (what the engine's libraries print goes to stderr).
Memory (Linux): the process's peak resident set (VmHWM) while the engine loads and runs, both
in total and above what the process held after importing the engine's libraries; the peak is
reset (/proc/self/clear_refs) after those imports, and batches warm up in increasing order, so
each batch's figure is the peak of loading plus running up to that batch.
Other work on the machine: the CPU used by every process outside this one and the measuring
processes is sampled once per round (`OtherLoad`); rounds where it reached CONTENDED_CORES are
flagged. `wait_for_quiet` can hold the rounds back until the machine is idle.
"""

from __future__ import annotations

import gc
import json
import math
import os
import select
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

MIN_REPEATS = 3
MIN_SAMPLE_S = 0.02  # shorter calls are timed in groups, so timer overhead stays negligible
STARTUP_S = 120  # allowance for a measuring process's imports and model loading
BATCH_WARMUP_S = 120  # allowance per batch for binding, warm-up and calibration
SETTLE_S = 0.05  # pause after each sample, so spinning worker threads go idle before the next
QUIET_CORES = 0.3  # the machine counts as idle below this many busy cores
CONTENDED_CORES = 0.25  # a round where other processes used this many cores is flagged


# ---- the measuring process -------------------------------------------------------------------

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


def calibrate(call: Callable[[], Any], warmup: int) -> tuple[float, int]:
    """Run the warm-up calls, time one more; (that call's ms, calls per sample)."""
    for _ in range(warmup):
        call()
    start = time.perf_counter()
    call()
    single = max(time.perf_counter() - start, 1e-9)
    return single * 1e3, max(1, math.ceil(MIN_SAMPLE_S / single))


def time_sample(call: Callable[[], Any], number: int) -> float:
    """One sample: `number` calls in a row; the per-call time in milliseconds."""
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number * 1e3


def prepare_task(task: dict) -> tuple[dict, dict[int, tuple[Callable[[], Any], int]]]:
    """Load the engine and warm up every batch of `task`: (the "ready" report, batch -> (call,
    calls per sample)) for the batches that work."""
    import numpy as np

    from .engines import Settings, Workload, get_engine

    engine = get_engine(task["engine"])
    workload = Workload(**task["workload"])
    settings = Settings(**task["settings"])
    engine.import_runtime()
    base = rss_mib()
    peak_reset = reset_peak_rss()
    report: dict = {"rss_after_imports_mib": base, "batches": {}}
    start = time.perf_counter()
    bind = engine.load(task["prepared"], workload, settings)
    report["load_s"] = time.perf_counter() - start
    calls = {}
    for batch in sorted(task["batches"]):
        try:
            images = np.load(task["inputs"][str(batch)])
            call = bind(images)
            single_ms, number = calibrate(call, task["timing"]["warmup"])
            row = {"status": "ok", "single_ms": single_ms, "calls_per_sample": number,
                   "output_shape": list(getattr(call(), "shape", ()))}
            peak = rss_mib("VmHWM")
            row["peak_rss_mib"] = peak
            row["engine_rss_mib"] = peak - base if peak_reset and peak and base else None
            calls[batch] = (call, number)
        except Exception as err:  # one batch failing (e.g. out of memory) keeps the others
            row = {"status": "failed", "reason": one_line(err)}
            traceback.print_exc()
        report["batches"][str(batch)] = row
    return report, calls


def serve(task: dict, requests, replies) -> None:
    """The measuring process's loop: report readiness, then one sample per request."""
    def reply(message: dict) -> None:
        replies.write(json.dumps(message) + "\n")
        replies.flush()

    report, calls = prepare_task(task)
    gc.collect()
    gc.disable()  # this process only times from now on
    reply({"ready": report})
    for line in requests:
        message = json.loads(line)
        if message.get("quit"):
            break
        try:
            call, number = calls[int(message["batch"])]
            reply({"ms": time_sample(call, number)})
        except Exception as err:
            traceback.print_exc()
            reply({"error": one_line(err)})


# ---- the benchmark's side: workers, rounds, ratios ---------------------------------------------

class WorkerError(RuntimeError):
    """A measuring process died, timed out or could not measure."""


class Worker:
    """One engine's measuring process, driven by JSON lines over its stdin and stdout; its
    stderr goes to `folder`/stderr.txt."""

    def __init__(self, task: dict, folder: Path, env: dict[str, str]):
        folder.mkdir(parents=True, exist_ok=True)
        task_file = folder / "task.json"
        task_file.write_text(json.dumps(task, indent=1))
        self.log_path = folder / "stderr.txt"
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed by close())
        command = [sys.executable, "-m", "ivit_tvm.benchmarks.harness", str(task_file)]
        self.proc = subprocess.Popen(command, env={**os.environ, **env}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, message: dict | None, timeout: float) -> dict:
        """Send `message` (None: send nothing) and wait for the reply line."""
        try:
            if message is not None:
                self.proc.stdin.write(json.dumps(message) + "\n")
                self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
            line = self.proc.stdout.readline() if ready else None
        except OSError:
            line = ""
        if line is None:
            self.close()
            raise WorkerError(f"measuring process timed out after {timeout:.0f} s")
        if not line:
            self.close()
            raise WorkerError(f"measuring process failed: {self._reason()}")
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def _reason(self) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""
        return _last_line(text) or f"exit status {self.proc.returncode}"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()


class OtherLoad:
    """CPU (in cores) used by processes other than this one and the `exclude` process trees,
    between one call of `sample` and the next (the first call starts counting)."""

    def __init__(self, exclude: Iterable[int]):
        import psutil

        self.psutil, self.exclude = psutil, list(exclude)
        self.processes: dict[int, Any] = {}

    def _ours(self) -> set[int]:
        ours = {os.getpid(), *self.exclude}
        for pid in self.exclude:
            try:
                ours |= {p.pid for p in self.psutil.Process(pid).children(recursive=True)}
            except self.psutil.Error:
                pass
        return ours

    def sample(self) -> float:
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


def round_orders(keys: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the engines in each round: forward, backward, forward, ... (ABCD, DCBA)."""
    return [list(keys) if r % 2 == 0 else list(reversed(keys)) for r in range(rounds)]


def round_count(sample_ms: Iterable[float], repeats: int, budget_s: float) -> int:
    """Rounds for one batch: `repeats`, fewer if the slowest engine's samples would take
    longer than `budget_s` in all, but at least MIN_REPEATS."""
    slowest = max(sample_ms, default=0.0) / 1e3
    fit = int(budget_s / slowest) if slowest > 0 else repeats
    return max(MIN_REPEATS, min(repeats, fit))


def round_ratios(samples: dict[str, list[float]], reference: str) -> dict[str, list[float]]:
    """Each engine's sample divided by the reference's sample of the same round."""
    ref = samples[reference]
    return {key: [mine / theirs for mine, theirs in zip(values, ref, strict=True)]
            for key, values in samples.items()}


def spread(values: Sequence[float]) -> dict:
    """Median, quartiles (inclusive method), min and max of at least two values."""
    p25, median, p75 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": median, "p25": p25, "p75": p75, "min": min(values), "max": max(values)}


def latency_stats(samples: Sequence[float], batch: int) -> dict:
    """The latency fields of a result row from per-call sample times (ms)."""
    s = spread(samples)
    return {"median_ms": s["median"], "p25_ms": s["p25"], "p75_ms": s["p75"],
            "iqr_ms": s["p75"] - s["p25"], "min_ms": s["min"], "max_ms": s["max"],
            "repeats": len(samples), "images_per_s": batch / s["median"] * 1e3}


def run_rounds(workers: dict[str, Worker], batch: int, sample_ms: dict[str, float],
               timing: dict, load: OtherLoad | None = None, settle_s: float = SETTLE_S) -> dict:
    """Time `batch` on every worker in alternating rounds. Returns the rounds' orders, each
    engine's samples (one per round), the engines that failed (and why) and the other
    processes' CPU per round (cores)."""
    keys = list(workers)
    rounds = round_count(sample_ms.values(), timing["repeats"], timing["budget_s"])
    samples: dict[str, list[float]] = {key: [] for key in keys}
    failed: dict[str, str] = {}
    others: list[float] = []
    orders = round_orders(keys, rounds)
    if load is not None:
        load.sample()
    for order in orders:
        for key in order:
            if key in failed:
                continue
            timeout = 60 + 20 * sample_ms[key] / 1e3
            try:
                samples[key].append(workers[key].request({"batch": batch}, timeout)["ms"])
            except WorkerError as err:
                failed[key] = str(err)
            time.sleep(settle_s)
        others.append(load.sample() if load is not None else 0.0)
    for key in failed:
        del samples[key]
    return {"orders": orders, "samples": samples, "failed": failed, "other_cores": others}


def measure_side_by_side(tasks: dict[str, dict], folder: Path, envs: dict[str, dict],
                         reference: str, wait_quiet_s: float = 0.0,
                         started: Callable[[str], None] | None = None,
                         timed: Callable[[int], None] | None = None) -> dict:
    """Start and warm up one measuring process per task (engine key -> task, all with the same
    batches), then time every batch in alternating rounds. Returns, per engine, what its
    process reported (load time, memory, per batch a row with latency and ratio fields or a
    failure), and per batch the rounds (orders, other processes' CPU, flagged rounds)."""
    workers: dict[str, Worker] = {}
    engines: dict[str, dict] = {}
    failure = {"status": "failed"}
    batches = sorted(next(iter(tasks.values()))["batches"]) if tasks else []
    try:
        for key, task in tasks.items():
            worker = Worker(task, folder / key, envs[key])
            timeout = STARTUP_S + BATCH_WARMUP_S * len(task["batches"])
            try:
                engines[key] = worker.request(None, timeout)["ready"]
                workers[key] = worker
            except WorkerError as err:
                engines[key] = {"batches": {str(b): {**failure, "reason": str(err)}
                                            for b in task["batches"]}}
            if started:
                started(key)
        load = OtherLoad(w.pid for w in workers.values())
        rounds_info = {}
        for batch in batches:
            ready = {key: workers[key] for key in workers
                     if engines[key]["batches"][str(batch)]["status"] == "ok"}
            calib = {key: engines[key]["batches"][str(batch)] for key in ready}
            waited = wait_for_quiet(wait_quiet_s) if wait_quiet_s else 0.0
            result = run_rounds(ready, batch, {k: c["single_ms"] * c["calls_per_sample"]
                                               for k, c in calib.items()},
                                _timing(tasks), load)
            rounds_info[str(batch)] = _batch_rows(engines, batch, result, reference, waited)
            if timed:
                timed(batch)
    finally:
        for worker in workers.values():
            worker.close()
    return {"engines": engines, "rounds": rounds_info}


def _timing(tasks: dict[str, dict]) -> dict:
    return next(iter(tasks.values()))["timing"]


def _batch_rows(engines: dict[str, dict], batch: int, result: dict, reference: str,
                waited: float) -> dict:
    """Fill in each engine's row for `batch` from the rounds; returns the rounds' summary."""
    others = result["other_cores"]
    contended = [i for i, cores in enumerate(others) if cores >= CONTENDED_CORES]
    other_load = {"mean_cores": round(statistics.mean(others or [0.0]), 2),
                  "max_cores": round(max(others, default=0.0), 2),
                  "contended_rounds": len(contended), "rounds": len(others)}
    samples = result["samples"]
    ratios = round_ratios(samples, reference) if reference in samples else {}
    for key, reason in result["failed"].items():
        engines[key]["batches"][str(batch)] = {"status": "failed", "reason": reason}
    for key, values in samples.items():
        row = engines[key]["batches"][str(batch)]
        row.update(latency_stats(values, batch))
        row.update({"samples_ms": values, "other_load": other_load,
                    "waited_for_quiet_s": round(waited, 1)})
        if key in ratios:
            s = spread(ratios[key])
            row.update({"ratio_to_reference": s["median"], "ratio_p25": s["p25"],
                        "ratio_p75": s["p75"], "ratio_min": s["min"], "ratio_max": s["max"]})
        else:
            row["ratio_to_reference"] = None
    return {"order": list(result["orders"][0]) if result["orders"] else [],
            "other_cores": [round(c, 2) for c in others], "contended": contended,
            "waited_for_quiet_s": round(waited, 1)}


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


def one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: " + " ".join(str(err).split())[:300]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def main(argv: list[str] | None = None) -> int:
    task = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    replies = os.fdopen(os.dup(1), "w")  # the protocol keeps the original stdout ...
    os.dup2(2, 1)  # ... and whatever the engines print goes to stderr
    sys.stdout = sys.stderr
    serve(task, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
