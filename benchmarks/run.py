"""The benchmark run: every model x engine x batch, prepared here and measured in isolation.

    results = run_benchmark(plan, work_folder)

For each model the workload (checkpoint, float weights, ONNX, input batches) is written once;
then each engine prepares its deployment in this process, every engine's own measuring process
loads and warms it up on the same saved input batches, and all of them are timed side by side
in alternating rounds (benchmarks.harness.measure_side_by_side). An engine that cannot run here is
skipped with its one-line reason, and one that fails leaves a failed row, never a crash.
"""

from __future__ import annotations

import datetime
import os
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .engines import REFERENCE, Settings, get_engine
from .harness import measure_side_by_side, one_line
from .machine import load_average, machine_info
from .workload import ModelSpec, make_workload

SCHEMA = "ivit-bench/2"  # 2: interleaved rounds, per-round ratios
INPUT_SEED = 0


@dataclass
class Plan:
    models: list[ModelSpec]
    batches: list[int]
    engines: list[str]
    settings: Settings
    timing: dict  # warmup, repeats (rounds), budget_s (benchmarks.harness.round_count)
    quick: bool = False
    wait_quiet_s: float = 0.0  # before each batch's rounds, wait this long at most for idle CPUs


def run_benchmark(plan: Plan, work: Path, progress: bool | None = None) -> dict:
    """Measure the plan; returns the results document (see report.py for its outputs)."""
    engines = [get_engine(key) for key in plan.engines]
    skipped = {engine.key: engine.skip_reason() for engine in engines}
    runnable = [e for e in engines if skipped[e.key] is None]
    results = {
        "schema": SCHEMA,
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "quick": plan.quick,
        "machine": machine_info(),
        "settings": {**plan.settings.to_dict(), **plan.timing, "batches": plan.batches,
                     "reference": REFERENCE, "wait_quiet_s": plan.wait_quiet_s},
        "models": [],
        "engines": [{**e.describe(), "skip_reason": skipped[e.key]} for e in engines],
        "rows": [],
        "rounds": [],  # per model and batch: engine order, other processes' CPU per round
    }
    env = thread_env(plan.settings.threads)
    os.environ.update(env)  # this process compiles and exports with the same thread counts
    steps = 1 + 2 * len(runnable) + len(plan.batches)  # model, prepare, start, rounds
    bar = tqdm(total=len(plan.models) * steps, desc="ivit-bench",
               unit="step", disable=progress is False)
    try:
        for spec in plan.models:
            folder = work / model_folder_name(spec.text)
            bar.set_postfix_str(f"{spec.label}: model")
            try:
                workload = make_workload(spec, folder)
            except Exception as err:
                traceback.print_exc()
                bar.update(steps)
                results["rows"] += _rows(spec, engines, plan.batches, skipped,
                                         f"model preparation failed: {one_line(err)}")
                continue
            bar.update(1)
            results["models"].append({"key": spec.text, "label": spec.label,
                                      "config": workload.config,
                                      "timm": {"name": workload.timm_name,
                                               **workload.timm_kwargs}})
            inputs = write_inputs(workload, plan.batches)
            prepared, tasks, envs = {}, {}, {}
            for engine in engines:
                if skipped[engine.key] is not None:
                    continue
                bar.set_postfix_str(f"{spec.label}: {engine.key} prepare")
                prepared[engine.key], error = _prepare(engine, workload, plan.settings)
                bar.update(1)
                if prepared[engine.key] is None:
                    prepared[engine.key] = f"prepare failed: {error}"
                    continue
                tasks[engine.key] = {"engine": engine.key, "workload": workload.to_dict(),
                                     "settings": plan.settings.to_dict(),
                                     "prepared": prepared[engine.key],
                                     "batches": plan.batches, "inputs": inputs,
                                     "timing": plan.timing}
                envs[engine.key] = {**env, **engine.runtime_env}
            bar.update(len(runnable) - len(tasks))  # engines whose prepare failed: no start
            bar.set_postfix_str(f"{spec.label}: start and warm up")
            measured = measure_side_by_side(
                tasks, folder / "measure", envs, REFERENCE, plan.wait_quiet_s,
                started=lambda key: bar.update(1),
                timed=lambda batch: bar.update(1)) if tasks else {"engines": {}, "rounds": {}}
            if not tasks:
                bar.update(len(plan.batches))
            results["rounds"] += [{"model": spec.text, "batch": int(batch), **info}
                                  for batch, info in measured["rounds"].items()]
            for engine in engines:
                if skipped[engine.key] is not None:
                    results["rows"] += _rows(spec, [engine], plan.batches, skipped)
                elif isinstance(prepared[engine.key], str):
                    results["rows"] += _rows(spec, [engine], plan.batches, skipped,
                                             prepared[engine.key])
                else:
                    results["rows"] += _measured_rows(spec, engine, plan.batches,
                                                      prepared[engine.key],
                                                      measured["engines"][engine.key])
    finally:
        bar.close()
    results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    results["machine"]["load_after"] = load_average()
    return results


def thread_env(threads: int) -> dict[str, str]:
    """Every framework's thread count: TVM's pool uses half the cores unless told."""
    count = str(threads)
    return {"TVM_NUM_THREADS": count, "OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count}


def write_inputs(workload, batches: list[int]) -> dict[str, str]:
    """One saved float32 batch per batch size, the same for every engine."""
    rng = np.random.default_rng(INPUT_SEED)
    paths = {}
    for batch in batches:
        path = Path(workload.folder) / f"images_b{batch}.npy"
        np.save(path, rng.standard_normal((batch, *workload.input_chw), dtype=np.float32))
        paths[str(batch)] = str(path)
    return paths


def _prepare(engine, workload, settings) -> tuple[dict | None, str]:
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            prepared = engine.prepare(workload, settings)
    except Exception as err:
        traceback.print_exc()
        return None, one_line(err)
    prepared.seconds = time.perf_counter() - start
    prepared.extra["warnings"] = len(caught)
    return prepared.to_dict(), ""


def _measured_rows(spec: ModelSpec, engine, batches, prepared: dict, measured: dict):
    rows = []
    for batch in batches:
        row = _row(spec, engine, batch)
        row.update(measured["batches"][str(batch)])
        row.update({"weights_bytes": prepared["weights_bytes"],
                    "weights_mib": prepared["weights_bytes"] / 2**20,
                    "prepare_s": prepared["seconds"], "load_s": measured.get("load_s"),
                    "rss_after_imports_mib": measured.get("rss_after_imports_mib"),
                    "notes": prepared["notes"], "prepare_details": prepared["extra"]})
        rows.append(row)
    return rows


def _rows(spec: ModelSpec, engines, batches, skipped: dict, failure: str | None = None):
    """Rows without measurements: skipped engines, or every engine after a failure."""
    rows = []
    for engine in engines:
        reason = skipped.get(engine.key)
        status = "skipped" if reason is not None else "failed"
        for batch in batches:
            rows.append({**_row(spec, engine, batch), "status": status,
                         "reason": reason if reason is not None else failure})
    return rows


def _row(spec: ModelSpec, engine, batch: int) -> dict:
    return {"model": spec.text, "model_label": spec.label, "engine": engine.key,
            "engine_label": engine.label, "device": engine.device,
            "precision": engine.precision, "batch": batch}


def model_folder_name(text: str) -> str:
    """The folder under the work folder that run_benchmark gives a model spec (also found by
    profile.py)."""
    return "".join(c if c.isalnum() else "_" for c in text)


__all__ = ["Plan", "run_benchmark", "thread_env", "write_inputs"]
