"""Tuned against hand-written: each kernel that a tuning database holds, timed both ways here.

    TVM_NUM_THREADS=2 python -m ivit_tvm.benchmarks.tune_report CKPT --database DIR --batch 1

For every tuning task of the checkpoint's model (schedules.tuning.tasks, at --batch) with a
record in the database, the kernel is built twice as a standalone library: with the
hand-written CPU rules (schedules.cpu.pipeline.schedule_primfunc) and with the record's
schedule (what ivit-compile builds from it). Both run on the same inputs (small random
integers, so the two results must be equal: the "same" column), then are timed in alternating
rounds (hand, tuned; tuned, hand; ...) so that a machine whose speed drifts slows both alike.
The table gives each kernel's median time both ways and the median and range of the per-round
ratio tuned / hand (below 1: the tuned kernel is faster). Other processes change the numbers:
compare ratios, not times across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tvm
from ivit_tvm.schedules.backend import make_target
from ivit_tvm.schedules.cpu.pipeline import schedule_primfunc
from ivit_tvm.schedules.targets import host_cpu
from ivit_tvm.schedules.tuning.apply import tuned_primfunc
from ivit_tvm.schedules.tuning.database import open_database, shipped_folder
from tqdm import tqdm

from ivit_tvm.cli.tune import model_tasks


@dataclass
class KernelTiming:
    kernel: str
    count: int  # PrimFuncs of the model with this structure
    hand_us: float  # median over rounds
    tuned_us: float
    ratio_median: float  # tuned / hand, per round
    ratio_min: float
    ratio_max: float
    same_output: bool


def build(func: tvm.tirx.PrimFunc, target: tvm.target.Target):
    """A standalone library of one kernel, entry "main"."""
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, target=target).jit()  # a loaded runtime module


def random_args(func: tvm.tirx.PrimFunc, seed: int) -> list[np.ndarray]:
    """One array per buffer parameter: integers in [0, 8) (bounded shifts, no overflow),
    floats in [0, 1)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for param in func.params:
        shape = [int(e) for e in param.ty.shape]
        dtype = str(param.ty.dtype)
        if dtype.startswith(("int", "uint")):
            arrays.append(rng.integers(0, 8, size=shape).astype(dtype))
        else:
            arrays.append(rng.random(shape).astype(dtype))
    return arrays


def run_once(lib, arrays: list[np.ndarray], dev) -> tuple[list, list[np.ndarray]]:
    tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
    lib["main"](*tensors)
    return tensors, [t.numpy() for t in tensors]


def report(checkpoint: Path, database: Path, batch: int, rounds: int, number: int,
           mcpu: str | None, kernels: tuple[str, ...] = ()) -> list[KernelTiming]:
    info = make_target("llvm", mcpu=mcpu)
    db = open_database(database)
    tasks = [t for t in model_tasks(checkpoint, info, batch)
             if db.has_workload(t.workload) and (not kernels or t.name in kernels)]
    if not tasks:
        raise SystemExit(f"{database}: no record for any kernel of {checkpoint} at batch "
                         f"{batch} (tune with ivit-tune --batch {batch} first)")
    dev = tvm.cpu(0)
    pairs = []
    for i, task in enumerate(tqdm(tasks, desc="build hand + tuned", unit="kernel")):
        hand = build(schedule_primfunc(task.func, info.caps), info.target)
        tuned = build(tuned_primfunc(task.func, db, info.target), info.target)
        arrays = random_args(task.func, seed=i)
        hand_args, hand_out = run_once(hand, arrays, dev)
        tuned_args, tuned_out = run_once(tuned, arrays, dev)
        same = all(np.array_equal(a, b) for a, b in zip(hand_out, tuned_out, strict=True))
        pairs.append((task, hand, tuned, hand_args, tuned_args, same))
    times = {task.name: ([], []) for task, *_ in pairs}
    for r in tqdm(range(rounds), desc="rounds", unit="round"):
        for task, hand, tuned, hand_args, tuned_args, _ in pairs:
            order = [(0, hand, hand_args), (1, tuned, tuned_args)]
            for which, lib, args in (order if r % 2 == 0 else order[::-1]):
                seconds = lib.time_evaluator("main", dev, number=number, repeat=1)(*args).mean
                times[task.name][which].append(seconds)
    results = []
    for task, *_, same in pairs:
        hand_s, tuned_s = times[task.name]
        ratios = [t / h for h, t in zip(hand_s, tuned_s, strict=True)]
        results.append(KernelTiming(task.name, task.weight, statistics.median(hand_s) * 1e6,
                                    statistics.median(tuned_s) * 1e6, statistics.median(ratios),
                                    min(ratios), max(ratios), same))
    return results


def print_table(results: list[KernelTiming]) -> None:
    print(f"{'kernel':<26} {'count':>5} {'hand us':>9} {'tuned us':>9} "
          f"{'tuned/hand':>10} {'range':>13} {'same':>5}")
    for r in results:
        print(f"{r.kernel:<26} {r.count:>5} {r.hand_us:>9.1f} {r.tuned_us:>9.1f} "
              f"{r.ratio_median:>10.2f} {f'{r.ratio_min:.2f}-{r.ratio_max:.2f}':>13} "
              f"{'yes' if r.same_output else 'NO':>5}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tune_report", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="I-ViT checkpoint the database was "
                        "tuned for (ivit-tune CKPT)")
    parser.add_argument("--database", type=Path, default=None,
                        help="Tuning database folder. Default: the package's for the target.")
    parser.add_argument("--batch", type=int, default=1,
                        help="Batch size the kernels were tuned at (default 1).")
    parser.add_argument("--rounds", type=int, default=7,
                        help="Alternating timing rounds (default 7).")
    parser.add_argument("--number", type=int, default=50,
                        help="Calls averaged per timing (default 50).")
    parser.add_argument("--mcpu", default=None,
                        help="LLVM CPU of the target (default: this host's).")
    parser.add_argument("--kernel", action="append", default=[],
                        help="Only this kernel (a name from ivit-tune --list; repeatable).")
    parser.add_argument("--json", type=Path, default=None,
                        help="Also write the results and the machine to this JSON file.")
    args = parser.parse_args(argv)
    database = args.database or shipped_folder(make_target("llvm", mcpu=args.mcpu).target)
    results = report(args.checkpoint, database, args.batch, args.rounds, args.number,
                     args.mcpu, tuple(args.kernel))
    print_table(results)
    if args.json:
        payload = {"checkpoint": str(args.checkpoint), "database": str(database),
                   "batch": args.batch, "rounds": args.rounds, "number": args.number,
                   "cpu": host_cpu(), "machine": platform.processor() or platform.machine(),
                   "cores": os.cpu_count(), "tvm_num_threads": os.environ.get("TVM_NUM_THREADS"),
                   "kernels": [asdict(r) for r in results]}
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
        tmp.replace(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
