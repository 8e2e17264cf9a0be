"""The measuring process of ivit-profile: per-call durations of one artifact's VM calls.

    TVM_USE_RUNTIME_LIB=1 TVM_NUM_THREADS=2 python -m ivit_tvm.benchmarks.profile_worker TASK.json

TVM 0.27's Relax VM has no profiler (no `profile=True`, no `vm.profile`, no
`tvm.runtime.profiling`), but it calls an instrument before and after every Call instruction
(`VirtualMachine.set_instrument`): the kernels (PrimFuncs), the VM builtins (`vm.builtin.*`:
allocation, shapes, views) and nested VM functions (`main` calls `main_int8`). This process
loads the artifact with the TVM runtime alone (`ivit_tvm.load`, as a deployment runs it), then
per repeat times one plain call (the end-to-end latency) and one instrumented call (every
call's duration, nested calls subtracted from their caller), alternating, so a drift of the
machine's speed hits both alike. It writes raw names and times; classifying them is the
parent's job (`profile.py`), which may import the TVM compiler (this process must not).

Task (JSON): {"artifact", "batch", "repeat", "warmup", "entry", "seed", "out"}.
Output (JSON, written to task["out"]): {"threads", "runtime_only", "batch", "entry",
"end_to_end_ms": [per repeat], "instrumented_ms": [per repeat], "cpu_seconds" and
"wall_seconds" (this process, over the repeats), "calls": {name: {"calls", "nested", "ms":
[per repeat]}}, "order": [names in call order]}.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

INSTRUMENT_NO_OP = 0  # VMInstrumentReturnKind.kNoOp: run the call as usual


class CallRecorder:
    """The VM instrument: per call name, the number of calls and their summed exclusive time
    (a call's duration minus the durations of the calls it made) of one run."""

    def __init__(self):
        self.stack: list[list] = []  # [name, start_ns, nested_ns, has_children]
        self.totals: dict[str, list] = {}  # name -> [calls, exclusive ns, nested: bool]

    def reset(self) -> None:
        self.stack.clear()
        self.totals = {}

    def __call__(self, func, name, before_run, ret_value, *args) -> int:
        if before_run:
            if self.stack:
                self.stack[-1][3] = True
            self.stack.append([str(name), 0, 0, False])
            self.stack[-1][1] = time.perf_counter_ns()  # last: the kernel starts next
            return INSTRUMENT_NO_OP
        end = time.perf_counter_ns()  # first: the kernel just returned
        call_name, start, nested_ns, has_children = self.stack.pop()
        duration = end - start
        if self.stack:
            self.stack[-1][2] += duration
        entry = self.totals.setdefault(call_name, [0, 0, False])
        entry[0] += 1
        entry[1] += duration - nested_ns
        entry[2] = entry[2] or has_children
        return INSTRUMENT_NO_OP


def measure(call: Callable[[], object], set_instrument: Callable, repeat: int,
            warmup: int) -> dict:
    """Warm up, then `repeat` times: one plain call timed, one instrumented call recorded."""
    recorder = CallRecorder()
    for _ in range(warmup):
        call()
    set_instrument(recorder)
    call()  # the instrumented path warms up too
    set_instrument(None)
    end_to_end, instrumented, runs = [], [], []
    cpu_start, wall_start = _cpu_seconds(), time.perf_counter()
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        end_to_end.append((time.perf_counter() - start) * 1e3)
        recorder.reset()
        set_instrument(recorder)
        start = time.perf_counter()
        call()
        instrumented.append((time.perf_counter() - start) * 1e3)
        set_instrument(None)
        runs.append(recorder.totals)
    cpu, wall = _cpu_seconds() - cpu_start, time.perf_counter() - wall_start
    return {"end_to_end_ms": end_to_end, "instrumented_ms": instrumented,
            "cpu_seconds": cpu, "wall_seconds": wall, **merge_runs(runs)}


def _cpu_seconds() -> float:
    """CPU time of this process, all its threads (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def merge_runs(runs: list[dict[str, list]]) -> dict:
    """Per name: calls per run (the first run's; every run makes the same calls), whether it
    made nested calls (a VM function), and its exclusive milliseconds in each run."""
    order = list(runs[0])
    calls = {}
    for name in order:
        counts = {run[name][0] for run in runs if name in run}
        if len(counts) != 1 or any(name not in run for run in runs):
            raise RuntimeError(f"{name}: called {sorted(counts)} times in different runs; "
                               "the VM's calls should not change between runs")
        calls[name] = {"calls": runs[0][name][0], "nested": runs[0][name][2],
                       "ms": [run[name][1] / 1e6 for run in runs]}
    return {"calls": calls, "order": order}


def profile(task: dict) -> dict:
    import numpy as np

    import ivit_tvm
    from ivit_tvm.runtime import import_tvm

    tvm = import_tvm()
    model = ivit_tvm.load(task["artifact"])
    fixed = model.input_shape[0]
    if fixed != -1 and task["batch"] != fixed:
        raise ValueError(f"{task['artifact']}: compiled for batch {fixed}, not "
                         f"{task['batch']}; profile --batch {fixed} or recompile with "
                         "--batch dynamic")
    rng = np.random.default_rng(task["seed"])
    shape = (task["batch"], *model.input_shape[1:])
    if task["entry"] == "main":
        images = rng.standard_normal(shape, dtype=np.float32)
    else:  # main_int8: int8 images
        images = rng.integers(-128, 128, size=shape, dtype=np.int8)
    tensor = tvm.runtime.tensor(images, model.device)
    function = model.vm[task["entry"]]
    result = measure(lambda: function(tensor), model.vm.set_instrument, task["repeat"],
                     task["warmup"])
    threads = tvm.get_global_func("runtime.NumThreads")()
    loaded = getattr(tvm.base, "_LOADED_LIBS", {})
    return {"threads": int(threads), "runtime_only": "tvm_compiler" not in loaded
            and os.environ.get("TVM_USE_RUNTIME_LIB") == "1",
            "batch": task["batch"], "entry": task["entry"], **result}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m ivit_tvm.benchmarks.profile_worker TASK.json", file=sys.stderr)
        return 2
    task = json.loads(Path(argv[0]).read_text())
    out = Path(task["out"])
    result = profile(task)
    temp = out.with_name(out.name + ".tmp")
    temp.write_text(json.dumps(result))
    os.replace(temp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
