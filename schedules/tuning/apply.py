"""ApplyTunedSchedules: kernels with a tuning record take its schedule instead of the hand one.

A step of the CPU pipeline (schedules.cpu.pipeline), after weight packing and before the
hand-written rules: every PrimFunc whose `workload` the database holds is replaced by the
best schedule recorded for it and marked, so ScheduleCPU leaves it alone. The database is the
one of the innermost `tuned_schedules(...)` scope, else the package's folder for the target
(schedules/tuned/<target key>/), else none (every kernel keeps its hand schedule).

    with tuned_schedules("my-db/") as scope:      # None: the package's database
        ex = tvm.compile(mod, target, relax_pipeline=cpu_pipeline(info))
    scope.applied                                 # {PrimFunc name: task description}

A scope with `collect=True` also keeps every PrimFunc the step saw (tasks.extract_tasks).
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from .database import RECORDS, WORKLOADS, open_database, shipped_folder, workload
from .intrinsics import TVM_VNNI_INTRIN, register_fixed_vnni

TUNED = "ivit.tuned"  # PrimFunc attribute: its schedule came from a tuning record


@dataclass
class TuningScope:
    """What one compile applies (`database`; None: the package's) and what it applied."""

    database: ms.database.Database | None = None
    collect: bool = False
    applied: dict[str, str] = field(default_factory=dict)  # PrimFunc name -> workload kind
    seen: list[tuple[str, tirx.PrimFunc]] = field(default_factory=list)  # with collect


_SCOPES: list[TuningScope] = []


@contextlib.contextmanager
def tuned_schedules(database: str | Path | ms.database.Database | None = None,
                    collect: bool = False):
    """While inside, ApplyTunedSchedules uses `database` (a folder ivit-tune wrote, or a
    MetaSchedule Database; None: the package's folder for the target) and records in the
    yielded TuningScope what it applied."""
    if isinstance(database, str | Path):
        database = open_database(database)
    scope = TuningScope(database, collect)
    _SCOPES.append(scope)
    try:
        yield scope
    finally:
        _SCOPES.remove(scope)


def _shipped_database(folder: Path) -> ms.database.Database | None:
    """The database in `folder` if it has one, read again when its records file changed."""
    records = folder / RECORDS
    if not ((folder / WORKLOADS).is_file() and records.is_file()):
        return None
    return _read_database(folder, records.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _read_database(folder: Path, _mtime_ns: int) -> ms.database.Database:
    return open_database(folder)


def _is_static(func: tirx.PrimFunc) -> bool:
    """Every buffer shape a constant: MetaSchedule measures concrete shapes only."""
    return all(
        isinstance(extent, tirx.IntImm)
        for param in func.params for extent in getattr(param.ty, "shape", [None])
    )


def tuned_primfunc(func: tirx.PrimFunc, database: ms.database.Database,
                   target: tvm.target.Target) -> tirx.PrimFunc | None:
    """`func` scheduled as the best record of `database` says, or None without a record."""
    mod = workload(func)
    if not database.has_workload(mod):
        return None
    record = database.query_tuning_record(mod, target, "main")
    if record is None:
        return None
    if TVM_VNNI_INTRIN in str(record.trace):
        register_fixed_vnni()
    sch = database.query_schedule(mod, target, "main")
    if sch is None:
        return None
    tuned = sch.mod["main"]
    symbol = (func.attrs or {}).get("global_symbol")
    return tuned.with_attr("global_symbol", symbol) if symbol is not None else \
        tuned.without_attr("global_symbol")


def apply_tuned_schedules(target: tvm.target.Target, scheduled_attr: str) -> tvm.transform.Pass:
    """The pipeline step (see module): tuned PrimFuncs get TUNED and `scheduled_attr` (the
    mark by which the hand-written rules pass over a kernel)."""

    @tvm.transform.module_pass(opt_level=0, name="ApplyTunedSchedules")
    def _pass(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        scope = _SCOPES[-1] if _SCOPES else None
        database = scope.database if scope and scope.database is not None else \
            _shipped_database(shipped_folder(target))
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or scheduled_attr in (func.attrs or {}):
                continue
            if not _is_static(func):
                continue
            if scope is not None and scope.collect:
                scope.seen.append((gv.name_hint, func))
            if database is None:
                continue
            try:
                tuned = tuned_primfunc(func, database, target)
            except tvm.error.TVMError as err:  # a record this TVM cannot replay
                warnings.warn(f"schedules.tuning: {gv.name_hint} keeps its hand schedule: the "
                              f"tuning record does not apply ({err})", stacklevel=2)
                continue
            if tuned is not None:
                updates[gv] = tuned.with_attr(TUNED, True).with_attr(scheduled_attr, True)
                if scope is not None:
                    scope.applied[gv.name_hint] = "tuned"
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return _pass


__all__ = ["TUNED", "TuningScope", "apply_tuned_schedules", "tuned_primfunc",
           "tuned_schedules"]
