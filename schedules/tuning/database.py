"""Where tuning records live and how a PrimFunc is looked up in them.

    folder = shipped_folder(info.target)      # schedules/tuned/llvm-znver4/
    database = open_database(folder)          # MetaSchedule's JSON database, two files
    database.has_workload(workload(func))

One folder per target key (the target kind and CPU, `target_key`): MetaSchedule's database
matches a workload by its structure alone, so records measured on one CPU must not be found
for another. The folders under schedules/tuned/ ship in the package; `ivit-tune` writes
there by default and `ivit-compile` reads them (schedules.tuning.apply).
"""

from __future__ import annotations

import re
from pathlib import Path

import tvm
from tvm import tirx
from tvm.s_tir import meta_schedule as ms

from .intrinsics import register_fixed_vnni

SHIPPED_ROOT = Path(__file__).resolve().parent.parent / "tuned"  # schedules/tuned/
WORKLOADS = "database_workload.json"  # MetaSchedule's JSONDatabase file names
RECORDS = "database_tuning_record.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]")


def target_key(target: tvm.target.Target) -> str:
    """The folder name of a target's records: kind and CPU (or CUDA arch), e.g.
    "llvm-znver4", "llvm-x86-64-v3", "cuda-sm_90"."""
    attrs = target.attrs
    machine = attrs.get("mcpu") or attrs.get("arch") or "generic"
    return _UNSAFE.sub("_", f"{target.kind.name}-{machine}")


def shipped_folder(target: tvm.target.Target) -> Path:
    """The package's record folder for `target` (it may not exist)."""
    return SHIPPED_ROOT / target_key(target)


def open_database(folder: str | Path, create: bool = False) -> ms.database.JSONDatabase:
    """MetaSchedule's JSON database in `folder` (WORKLOADS + RECORDS). Without `create`, a
    folder lacking either file is a FileNotFoundError naming it."""
    folder = Path(folder)
    if not create:
        missing = [name for name in (WORKLOADS, RECORDS) if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{folder}: no tuning database here (missing {', '.join(missing)}); give the "
                "folder ivit-tune wrote"
            )
    folder.mkdir(parents=True, exist_ok=True)
    # Records tuned on a VNNI CPU name `dot_16x4_vnni` in their traces, and the database parses
    # every trace as it opens: without the (fixed) intrinsic registered, opening fails.
    register_fixed_vnni()
    return ms.database.JSONDatabase(str(folder / WORKLOADS), str(folder / RECORDS),
                                    allow_missing=create)


def workload(func: tirx.PrimFunc) -> tvm.IRModule:
    """The module a PrimFunc is tuned and looked up as: one function "main", whatever its
    name in the model, so the kernels of repeated layers share one record."""
    func = func.with_attr("global_symbol", "main").with_attr("tirx.noalias", True)
    return tvm.IRModule({"main": func})


__all__ = ["RECORDS", "SHIPPED_ROOT", "WORKLOADS", "open_database", "shipped_folder",
           "target_key", "workload"]
