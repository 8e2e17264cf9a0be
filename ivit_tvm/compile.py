"""The compile pipeline: checkpoint -> Relax -> integer passes -> target build -> artifact.

    report = compile_checkpoint("ckpt.pth", "llvm", out="deit.ivit")

Each stage is one call; `compile_checkpoint` strings them together with a progress bar and
writes the artifact atomically (artifact.AtomicFolder). The target's backend
(schedules.backend, looked up once from `make_target`'s TargetInfo) builds and exports.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tqdm import tqdm

from . import __version__
from .artifact import LIBRARY, AtomicFolder, check_output_path, write_manifest
from .frontend import FrontendResult, from_model
from .manifest import file_sha256
from .models.precision import set_softmax_bits
from .models.precision import softmax_bits as softmax_bits_of
from .schedules.backend import TargetInfo, get_backend, make_target
from .schedules.tuning.apply import tuned_schedules
from .schedules.tuning.database import open_database


@dataclass
class CompileReport:
    out: Path
    target: dict
    seconds: dict = field(default_factory=dict)  # stage -> wall seconds
    library_bytes: int = 0
    contents: str = ""
    tuned_kernels: list[str] = field(default_factory=list)  # schedules from the tuning database
    trained_softmax_bits: int | None = None  # compile_checkpoint: the width before --softmax-bits

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def lower_model(model, target: TargetInfo, batch: int | None = None) -> FrontendResult:
    """from_model as the target prefers it: Shiftmax/ShiftGELU per element in int64 where the
    target multiplies 64-bit vectors natively (Capabilities.int64_vectors), int32 otherwise;
    16-bit probabilities @ V as two 8-bit GEMMs on int8 tensor cores."""
    return from_model(model, batch=batch, narrow_exp=not target.caps.int64_vectors,
                      byte_products=target.caps.int8_tensor_cores)


def apply_graph_passes(result: FrontendResult) -> FrontendResult:
    """relay_passes.integer_pipeline: verify integer-only, fuse GEMM + requantize."""
    from relay_passes import integer_pipeline

    result.mod = integer_pipeline()(result.mod)
    return result


def versions() -> dict:
    import torch

    return {"ivit_tvm": __version__, "tvm": tvm.__version__, "torch": torch.__version__}


@contextlib.contextmanager
def temporary_files_in(folder: Path):
    """Send the temporary files of tempfile users (TVM's export_library: lib0.o, devc.c) and
    child processes (the C compiler, the CUDA export worker) to `folder` meanwhile, so that one
    cleanup removes them and a killed compile leaves them only there."""
    saved = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = os.environ["TMPDIR"] = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved[0]
        if saved[1] is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved[1]


def compile_model(model, target: TargetInfo, out: str | os.PathLike,
                  batch: int | None = None, force: bool = False, source: str = "",
                  progress: bool = True, checkpoint_sha256: str | None = None,
                  assumed: dict[str, str] | None = None,
                  tuning_db=None) -> CompileReport:
    """Compile a loaded, frozen I-ViT model into an artifact folder at `out` (target: from
    make_target); `checkpoint_sha256` (of the file it was loaded from) goes in the manifest,
    and so do the configuration fields taken from a convention (`assumed`, from
    CheckpointInfo.assumed: {field: convention}). Kernels with a record in the tuning database
    (the folder `tuning_db` from ivit-tune, or its opened database; default: the package's
    for the target) take its schedule; the manifest lists them as "tuned_kernels"."""
    out = check_output_path(out, force)
    if isinstance(tuning_db, str | os.PathLike):
        tuning_db = open_database(tuning_db)
    backend = get_backend(target.kind)
    report = CompileReport(out=out, target=json.loads(str(target.target)))
    softmax_width = softmax_bits_of(model)  # recorded: ivit-eval runs its reference at it
    stages = ["frontend", "graph passes", "build", "export"]
    bar = tqdm(total=len(stages), desc="ivit-compile", unit="stage", disable=not progress)

    def stage(name: str):
        bar.set_postfix_str(name)
        return time.perf_counter()

    def done(name: str, start: float):
        report.seconds[name] = round(time.perf_counter() - start, 3)
        bar.update(1)

    atomic = AtomicFolder(out, force=force)
    try:
        with atomic as folder, temporary_files_in(atomic.temp):
            t = stage("frontend")
            result = lower_model(model, target, batch=batch)
            done("frontend", t)
            t = stage("graph passes")
            result = apply_graph_passes(result)
            done("graph passes", t)
            t = stage("build")
            with tuned_schedules(tuning_db) as tuned:
                built = backend.build(result.mod, target)
            report.tuned_kernels = sorted(tuned.applied)
            done("build", t)
            t = stage("export")
            report.contents = backend.export(built, target, folder / LIBRARY)
            report.library_bytes = (folder / LIBRARY).stat().st_size
            write_manifest(folder, {
                "source": source,
                "checkpoint_sha256": checkpoint_sha256,
                "library_bytes": report.library_bytes,
                "library_sha256": file_sha256(folder / LIBRARY),
                "config": model.config.to_dict(),
                "assumed": {key: f"{getattr(model.config, key)} taken from {why}"
                            for key, why in (assumed or {}).items()},
                "input_scale": result.input_scale,
                "input_bits": model.qact_input.activation_bit,
                "softmax_bits": softmax_width,
                "input_shape": list(result.input_shape),
                "logits_scale": [float(v) for v in result.logits_scale],
                "target": report.target,
                "entry_points": {"main": "float32 NCHW images -> int32 logits",
                                 "main_int8": "int8 NCHW images -> int32 logits"},
                "contents": report.contents,
                "tuned_kernels": report.tuned_kernels,
                # CUDA: each GEMM's strategy (mma / dp4a) and tile, as the schedule chose them
                "gemm_kernels": list(getattr(built, "gemms", [])),
                "versions": versions(),
                "compile_seconds": report.seconds,
            })
            done("export", t)
    finally:
        bar.close()
    return report


def compile_checkpoint(checkpoint: str | os.PathLike, target_kind: str, out: str | os.PathLike,
                       arch: str | None = None, mcpu: str | None = None,
                       batch: int | None = None, force: bool = False, name: str | None = None,
                       progress: bool = True, given: dict | None = None,
                       tuning_db: str | os.PathLike | None = None,
                       softmax_bits: int | None = None) -> CompileReport:
    """Load a checkpoint (ivit_tvm.checkpoint; `name` and `given` fields supply what it cannot
    tell) and compile it (see compile_model); `softmax_bits` 8 or 16 sets the Shiftmax output
    width (models.precision; None: as trained)."""
    from .checkpoint import load_checkpoint

    target = make_target(target_kind, arch=arch, mcpu=mcpu)
    check_output_path(out, force)
    database = open_database(tuning_db) if tuning_db is not None else None
    model, info = load_checkpoint(checkpoint, name=name, **(given or {}))
    trained = softmax_bits_of(model)
    if softmax_bits is not None:
        set_softmax_bits(model, softmax_bits)
    report = compile_model(model, target, out, batch=batch, force=force,
                           source=str(Path(checkpoint).resolve()), progress=progress,
                           checkpoint_sha256=file_sha256(checkpoint), assumed=info.assumed,
                           tuning_db=database)
    report.trained_softmax_bits = trained
    return report
