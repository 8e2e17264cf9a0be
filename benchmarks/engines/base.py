"""What every benchmark engine provides, and the workload they all run.

An engine has two halves, so that its memory can be measured without the compiler's:
`prepare` runs in the benchmark's main process (export, quantize, compile: whatever the
deployment needs) and writes files; `load` runs in a fresh measuring process (benchmarks.harness)
and returns `bind`: `bind(images)` places a batch where the engine wants it and returns a
zero-argument call that runs that batch once, synchronously. `prepare` returns plain JSON, which is
all the measuring process gets.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass(frozen=True)
class Workload:
    """One model, prepared once for every engine (benchmarks.workload writes the files)."""

    key: str  # the model as given on the command line, e.g. "deit_tiny"
    label: str  # for tables, e.g. "DeiT-T"
    config: dict  # ivit_tvm ModelConfig.to_dict()
    timm_name: str
    timm_kwargs: dict  # timm.create_model overrides giving the same architecture
    checkpoint: str  # ivit-quantize checkpoint (random init, random calibration)
    fp_weights: str  # the float weights of the checkpoint as a timm state dict (torch.save)
    onnx_fp32: str  # the timm model exported to ONNX with a dynamic batch axis
    folder: str  # where engines write their files for this model

    @property
    def input_chw(self) -> tuple[int, int, int]:
        return (self.config["in_chans"], self.config["img_size"], self.config["img_size"])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Settings:
    """Run-wide choices every engine sees."""

    threads: int  # TVM_NUM_THREADS, torch threads, ORT intra-op threads
    mcpu: str  # LLVM CPU of the TVM llvm target (both TVM engines)
    max_batch: int  # the largest batch benchmarked (TensorRT's optimization profile)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prepared:
    """What `prepare` made: files for `load`, the deployed weights' size, notes for the table."""

    files: dict[str, str]  # role -> path
    weights_bytes: int  # bytes of what a deployment ships (library, .onnx, state dict)
    notes: str = ""
    seconds: float = 0.0  # wall time of prepare, filled in by benchmarks.run
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


class Engine:
    """Base class: subclasses set the class attributes and implement `prepare` and `load`."""

    key: str = ""  # command-line name, e.g. "ort-int8"
    label: str = ""  # table name, e.g. "ONNX Runtime INT8"
    device: str = "cpu"  # "cpu" or "cuda"
    precision: str = ""  # "int8", "fp32", "fp16", "bf16"
    modules: tuple[str, ...] = ()  # Python packages it needs at run time
    runtime_env: ClassVar[dict[str, str]] = {}  # extra environment of the measuring process

    def skip_reason(self) -> str | None:
        """Why this engine cannot run on this machine, or None."""
        for module in self.modules:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed"
        if self.device == "cuda":
            return cuda_missing()
        return None

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        raise NotImplementedError

    def import_runtime(self) -> None:
        """Import the run-time libraries (before the measuring process takes its memory base)."""
        for module in self.modules:
            __import__(module)

    def load(self, prepared: dict, workload: Workload,
             settings: Settings) -> Callable[[np.ndarray], Callable[[], Any]]:
        """Load the prepared model; returns `bind(images (B, C, H, W) float32) -> call`."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"key": self.key, "label": self.label, "device": self.device,
                "precision": self.precision}


def file_bytes(*paths: str | os.PathLike) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def cuda_missing() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "no PyTorch to find a CUDA GPU with"
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU on this machine"
