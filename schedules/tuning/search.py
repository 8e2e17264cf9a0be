"""MetaSchedule's search over tuning tasks, measured here or on RPC devices.

    results = tune(tasks, info, "schedules/tuned/llvm-znver4", trials=64,
                   rpc=RPCSettings("tracker.lan", 9190, "znver4"))

Candidates are built here (LocalBuilder) and measured either here (LocalRunner) or on the
devices registered with an RPC tracker under a key (RPCRunner): `python -m
tvm.exec.rpc_tracker --port 9190` on one machine, `python -m tvm.exec.rpc_server --tracker
HOST:9190 --key KEY` on each device. The hand-written schedule of each task is built and
timed the same way first. Every measurement goes to a database in a work folder; the best
record of each task that beats its hand schedule is then added to the database in `folder`
(schedules.tuning.database), which ivit-compile reads.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..targets import TargetInfo
from .database import open_database, workload
from .intrinsics import skip_intrinsic_library
from .tasks import TuningTask

FAILED_RUN_S = 1e9  # MetaSchedule records a failed run as 1e10 s
SEARCHES = {"evolutionary": ("evolutionary", "xgb"), "random": ("replay-trace", "random")}


@dataclass(frozen=True)
class RPCSettings:
    """Where candidates are measured: devices registered with the tracker at host:port under
    `key`."""

    host: str
    port: int
    key: str
    session_timeout_s: int = 60

    @classmethod
    def parse(cls, tracker: str, key: str) -> RPCSettings:
        """From "HOST:PORT" and a key; ValueError naming the expected form."""
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--rpc-tracker {tracker!r}: write HOST:PORT, e.g. 10.0.0.5:9190")
        if not key:
            raise ValueError("--rpc-key is empty: give the key the RPC servers registered "
                             "with (rpc_server --key KEY)")
        return cls(host, int(port), key)


def check_tracker(rpc: RPCSettings) -> int:
    """How many servers the tracker lists under the key; OSError when it cannot be reached,
    ValueError when none registered under the key (naming the keys it has)."""
    from tvm import rpc as tvm_rpc

    try:
        socket.create_connection((rpc.host, rpc.port), timeout=10).close()
        summary = tvm_rpc.connect_tracker(rpc.host, rpc.port).summary()
    except (OSError, RuntimeError) as err:
        raise OSError(f"RPC tracker {rpc.host}:{rpc.port} cannot be reached ({err}); start "
                      "it with python -m tvm.exec.rpc_tracker --port PORT") from err
    keys = [str(s["key"]).split(":", 1)[-1] for s in summary.get("server_info", [])]
    if rpc.key not in keys:
        raise ValueError(f"RPC tracker {rpc.host}:{rpc.port} has no server under the key "
                         f"{rpc.key!r} (keys: {', '.join(sorted(set(keys))) or 'none'}); start "
                         f"one with python -m tvm.exec.rpc_server --tracker "
                         f"{rpc.host}:{rpc.port} --key {rpc.key}")
    return keys.count(rpc.key)


@dataclass(frozen=True)
class TaskResult:
    """A task's best measured time, its hand schedule's time measured alike (seconds per
    call; None: no valid candidate / not measured), and whether its record was kept."""

    task: TuningTask
    best_s: float | None
    trials: int
    hand_s: float | None = None
    kept: bool = False


def measure_hand(tasks: list[TuningTask], info: TargetInfo, builder: ms.builder.Builder,
                 runner: ms.runner.Runner) -> list[float | None]:
    """Each task with the hand-written CPU rules, built and timed by the same builder and
    runner as the candidates (seconds per call; None where it failed)."""
    from ..cpu.pipeline import schedule_primfunc

    built = builder.build([
        ms.builder.BuilderInput(workload(schedule_primfunc(t.func, info.caps)), info.target)
        for t in tasks
    ])
    device = {"llvm": "cpu"}.get(info.target.kind.name, info.target.kind.name)
    times: list[float | None] = [None] * len(tasks)
    ok = [i for i, b in enumerate(built) if b.error_msg is None]
    futures = runner.run([
        ms.runner.RunnerInput(built[i].artifact_path, device,
                              ms.arg_info.ArgInfo.from_prim_func(tasks[i].func))
        for i in ok
    ])
    for i, future in zip(ok, futures, strict=True):
        result = future.result()
        if result.error_msg is None and result.run_secs:
            times[i] = _mean(result.run_secs)
    return times


def _keep_best(scratch: ms.database.Database, task: TuningTask, info: TargetInfo,
               folder: str | Path) -> None:
    """Add the best record of `task` in `scratch` to the database in `folder`."""
    record = scratch.query_tuning_record(task.workload, info.target, "main")
    destination = open_database(folder, create=True)
    destination.commit_tuning_record(ms.database.TuningRecord(
        record.trace, destination.commit_workload(task.workload), record.run_secs,
        record.target, record.args_info))


def make_runner(rpc: RPCSettings | None, workers: int) -> ms.runner.Runner:
    """LocalRunner, or RPCRunner through the tracker of `rpc`."""
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=20,
                                          enable_cpu_cache_flush=False)
    if rpc is None:
        return ms.runner.LocalRunner(evaluator_config=evaluator)
    config = ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port,
                                 tracker_key=rpc.key, session_timeout_sec=rpc.session_timeout_s)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               max_workers=workers)


def _progress_callback(on_measured: Callable[[int, int], None]):
    """A MetaSchedule measure callback calling on_measured(task index, candidates)."""

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            on_measured(int(task_id), len(measure_candidates))

    return Progress()


def tune(tasks: list[TuningTask], info: TargetInfo, folder: str | Path, trials: int,
         rpc: RPCSettings | None = None, work_dir: str | Path | None = None,
         threads: int = 1, seed: int = 0, search: str = "evolutionary",
         keep_slower: bool = False,
         on_measured: Callable[[int, int], None] | None = None) -> list[TaskResult]:
    """Search `trials` candidates per task (see module) with `threads` tuning threads and
    builder workers; measure the hand schedules alike, and add each task's best record to the
    database in `folder` when it beats its hand schedule (or always, `keep_slower`).

    search: "evolutionary" (MetaSchedule's default: mutations guided by an XGBoost cost
    model) or "random" (random draws from the design space, no cost model: cheap, for a
    handful of trials)."""
    if search not in SEARCHES:
        raise ValueError(f"search {search!r}: choose one of {', '.join(SEARCHES)}")
    if not tasks:
        raise ValueError("no kernels to tune")
    if trials < 1:
        raise ValueError(f"--trials {trials}: give at least 1")
    if rpc is not None:
        check_tracker(rpc)
    skip_intrinsic_library()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="ivit-tune-", dir=work_dir) as scratch:
        contexts = [
            ms.TuneContext(mod=task.workload, target=info.target,
                           space_generator="post-order-apply",
                           search_strategy=SEARCHES[search][0],
                           task_name=task.name, rand_state=seed + i, num_threads=threads,
                           logger=ms.logging.get_logger(f"ivit-tune.{i}")).clone()
            for i, task in enumerate(tasks)
        ]
        builder = ms.builder.LocalBuilder(max_workers=threads,
                                          initializer=skip_intrinsic_library)
        runner = make_runner(rpc, threads)
        hand = measure_hand(tasks, info, builder, runner)
        callbacks = ms.measure_callback.MeasureCallback.create("default")
        if on_measured is not None:
            callbacks = list(callbacks) + [_progress_callback(on_measured)]
        scratch_db = ms.tune_tasks(
            tasks=contexts,
            task_weights=[float(t.weight) for t in tasks],
            work_dir=scratch,
            max_trials_global=trials * len(tasks),
            max_trials_per_task=trials,
            num_trials_per_iter=min(trials, 16),
            builder=builder,
            runner=runner,
            database="json",
            measure_callbacks=callbacks,
            cost_model=SEARCHES[search][1],
            task_scheduler="gradient" if len(tasks) > 1 else "round-robin",
        )
        results = []
        for task, hand_s in zip(tasks, hand, strict=True):
            records = [r for r in scratch_db.get_all_tuning_records()
                       if tvm_ffi.structural_equal(r.workload.mod, task.workload)]
            valid = [s for s in (_mean(r.run_secs) for r in records if r.run_secs)
                     if s < FAILED_RUN_S]
            best = min(valid) if valid else None
            keep = best is not None and (keep_slower or hand_s is None or best < hand_s)
            if keep:
                _keep_best(scratch_db, task, info, folder)
            results.append(TaskResult(task, best, len(records), hand_s, keep))
    return results


def _mean(run_secs) -> float:
    values = [float(v) for v in run_secs]
    return sum(values) / len(values)


__all__ = ["RPCSettings", "TaskResult", "check_tracker", "make_runner", "measure_hand",
           "tune"]
