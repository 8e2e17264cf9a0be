"""OpenVINO on the CPU: the exported FP32 ONNX model, and its NNCF INT8 post-training quantization.

`ov-fp32`: `openvino.convert_model` of the workload's ONNX export (opset 17, TorchScript
exporter), saved as IR (.xml + .bin) with float32 weights (`compress_to_fp16=False`) and
compiled with `INFERENCE_PRECISION_HINT=f32` (on CPUs with AVX512_BF16 or AMX OpenVINO would
otherwise run a float model in bf16).
`ov-int8`: `nncf.quantize` of that model with `ModelType.TRANSFORMER` (its default preset:
symmetric int8 activations, per-channel int8 weights, SmoothQuant and fast bias correction),
calibrated on the same images as ivit-tvm's checkpoint (`workload.CALIBRATION`, one image per
NNCF item). The linear layers, the patch embedding and the attention matmuls NNCF quantizes
run in int8; LayerNorm, Softmax and GELU stay float (NNCF's transformer mode). Compiled with
OpenVINO's default precision for the rest, as a user gets it; the precision it resolved to is
recorded in the results.
Both: `compile_config` (INFERENCE_NUM_THREADS = the run's threads, PERFORMANCE_HINT=LATENCY,
NUM_STREAMS=1); one compiled model with a dynamic batch axis serves every batch (see
`STATIC_BATCH`), and the saved input batch is bound to the request without a copy.

Per-layer profile (OpenVINO's own counters, for `ivit-profile`; docs in benchmarks/README.md):

    layers = openvino_layer_profile("deit_small", batch=1, threads=2)  # [(layer type, ms)]
    profile = openvino_profile(workload_or_model, batch=8, threads=2, precision="fp32")
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import logging
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .base import Engine, Prepared, Settings, Workload, file_bytes

DEVICE = "CPU"
# One compiled model with a dynamic batch (like ivit-tvm's artifact and ONNX Runtime), not one per
# batch with a static shape: DeiT-S, 2 threads, interleaved on the 2-core Zen 1 (busy host),
# dynamic / static latency median 1.02 (int8 b1), 0.92 (int8 b8), 1.01 (fp32 b1), 0.94 (fp32 b8).
STATIC_BATCH = False
# Read back from the compiled model into the results: what OpenVINO actually resolved.
RESOLVED_PROPERTIES = ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
                       "PERFORMANCE_HINT", "EXECUTION_MODE_HINT", "ENABLE_CPU_PINNING",
                       "ENABLE_HYPER_THREADING")
PROFILE_WARMUP, PROFILE_RUNS = 3, 20


def compile_config(threads: int, precision: str, perf_count: bool = False) -> dict:
    """The OpenVINO CPU properties of both engines (and of the per-layer profile)."""
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1}
    if precision == "fp32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if perf_count:
        config["PERF_COUNT"] = True
    return config


def nncf_settings(workload: Workload) -> dict:
    """The `nncf.quantize` arguments of ov-int8 (plain values, for the results)."""
    from ..workload import CALIBRATION

    images = CALIBRATION["n"] * CALIBRATION["batch"]
    return {"model_type": "TRANSFORMER", "preset": "default (PERFORMANCE)",
            "subset_size": images, "fast_bias_correction": True,
            "calibration": {"images": "random", **CALIBRATION, "items": f"{images} x (1, C, H, W)"}}


def versions() -> dict[str, str]:
    """Installed openvino and nncf versions (None where not installed)."""
    out = {}
    for package in ("openvino", "nncf"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    return out


class OpenVINO(Engine):
    runtime_modules = ("openvino",)  # what the measuring process needs (not nncf)

    def __init__(self, key: str, label: str, precision: str):
        self.key, self.label, self.precision = key, label, precision
        self.modules = ("openvino", "nncf") if precision == "int8" else ("openvino",)

    def skip_reason(self) -> str | None:
        """Not installed, or installed but failing to import (one line either way)."""
        missing = super().skip_reason()
        if missing:
            return missing
        for module in self.modules:
            try:
                with _quiet_stdout():
                    importlib.import_module(module)
            except Exception as err:  # broken install, missing shared library, ...
                text = " ".join(str(err).split())[:200]
                return f"{module} fails to import: {type(err).__name__}: {text}"
        return None

    def import_runtime(self) -> None:
        for module in self.runtime_modules:
            importlib.import_module(module)

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        xml = write_ir(workload, self.precision)
        config = compile_config(settings.threads, self.precision)
        resolved = resolved_properties(xml, config)
        ops = int8_op_counts(xml)
        ver = versions()
        extra = {"versions": ver, "compile_config": config, "resolved": resolved,
                 "static_batch": STATIC_BATCH, "ir_ops": ops}
        quantized = ""
        if self.precision == "int8":
            extra["nncf"] = nncf_settings(workload)
            quantized = (f"NNCF {ver['nncf']} PTQ (ModelType.TRANSFORMER, "
                         f"{extra['nncf']['subset_size']} calibration images: "
                         f"{ops['FakeQuantize']} FakeQuantize, {ops['int8_constants']} int8 "
                         "weight tensors; LayerNorm/Softmax/GELU float); ")
        notes = (f"OpenVINO {ver['openvino']}; {quantized}"
                 f"{settings.threads} threads (INFERENCE_NUM_THREADS), PERFORMANCE_HINT=LATENCY, "
                 f"NUM_STREAMS=1, inference precision "
                 f"{resolved.get('INFERENCE_PRECISION_HINT', '?')}"
                 f"{' (set)' if self.precision == 'fp32' else ' (default)'}, CPU pinning "
                 f"{'on' if resolved.get('ENABLE_CPU_PINNING') else 'off'} (default), "
                 f"{'static shape per batch' if STATIC_BATCH else 'dynamic batch'}; "
                 "weights = IR .xml + .bin")
        return Prepared(files={"xml": str(xml), "bin": str(xml.with_suffix(".bin"))},
                        weights_bytes=file_bytes(xml, xml.with_suffix(".bin")),
                        notes=notes, extra=extra)

    def load(self, prepared: dict, workload: Workload, settings: Settings):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(prepared["files"]["xml"])
        config = compile_config(settings.threads, self.precision)
        dynamic = None if STATIC_BATCH else core.compile_model(model, DEVICE, config)

        def bind(images: np.ndarray):
            compiled = (dynamic if dynamic is not None
                        else compile_static(core, model, images.shape, config))
            request = compiled.create_infer_request()
            request.set_input_tensor(ov.Tensor(images, shared_memory=True))

            def run(images=images):  # the request reads `images` in place: keep it alive
                request.infer()
                return request.get_output_tensor(0).data
            return run

        return bind


def compile_static(core, model, shape: tuple[int, ...], config: dict):
    """`model` compiled for one static input shape (the model itself is left as it was)."""
    static = model.clone()
    static.reshape({static.inputs[0]: list(shape)})
    return core.compile_model(static, DEVICE, config)


def write_ir(workload: Workload, precision: str) -> Path:
    """The workload's ONNX model as OpenVINO IR, float32 or NNCF-quantized; returns the .xml."""
    import openvino as ov

    model = ov.convert_model(workload.onnx_fp32)
    if precision == "int8":
        model = quantize(model, workload)
    xml = Path(workload.folder) / f"ov_{precision}.xml"
    ov.save_model(model, xml, compress_to_fp16=False)
    return xml


def calibration_items(workload: Workload) -> list[np.ndarray]:
    """The checkpoint's calibration images (ivit_tvm.ptq.random_batches with the workload's
    CALIBRATION), one (1, C, H, W) float32 array each."""
    from ivit_tvm.models import config_from_dict
    from ivit_tvm.ptq import random_batches

    from ..workload import CALIBRATION

    config = config_from_dict(workload.config)
    batches = random_batches(config, CALIBRATION["n"], CALIBRATION["batch"],
                             seed=CALIBRATION["seed"])
    return [image[None].numpy() for batch in batches for image in batch]


def quantize(model, workload: Workload):
    """NNCF post-training quantization (transformer mode) of an OpenVINO model."""
    import nncf

    items = calibration_items(workload)
    with _quiet_stdout():
        return nncf.quantize(model, nncf.Dataset(items), model_type=nncf.ModelType.TRANSFORMER,
                             subset_size=len(items))


def resolved_properties(xml: str | Path, config: dict) -> dict[str, str]:
    """The RESOLVED_PROPERTIES of the model compiled with `config` on this machine."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(xml), DEVICE, config)
    out = {}
    for name in RESOLVED_PROPERTIES:
        try:
            out[name] = _plain(compiled.get_property(name))
        except RuntimeError:  # not reported by this OpenVINO version
            pass
    return out


def int8_op_counts(xml: str | Path) -> dict[str, int]:
    """How much of an IR is quantized: FakeQuantize ops, int8/uint8 constants, all ops."""
    import openvino as ov

    ops = ov.Core().read_model(str(xml)).get_ops()
    types = Counter(op.get_type_name() for op in ops)
    int8 = sum(1 for op in ops if op.get_type_name() == "Constant"
               and op.get_output_element_type(0).get_type_name() in ("i8", "u8"))
    return {"FakeQuantize": types["FakeQuantize"], "int8_constants": int8, "ops": len(ops)}


def runtime_precisions(compiled) -> Counter:
    """(layer type, runtime precision) of every node OpenVINO's CPU plugin executes."""
    return Counter((op.get_rt_info()["layerType"].astype(str),
                    op.get_rt_info()["runtimePrecision"].astype(str))
                   for op in compiled.get_runtime_model().get_ops())


# ---- per-layer profile ---------------------------------------------------------------------------

@dataclass
class LayerProfile:
    """OpenVINO's per-layer counters for one model and batch, summed per layer type."""

    model: str
    batch: int
    threads: int
    precision: str
    layers: list[tuple[str, float]]  # (layer type, ms per inference), slowest first
    kernels: dict[str, list[str]]  # layer type -> the CPU plugin's kernels (exec types) for it
    layers_ms: float  # sum of `layers`
    end_to_end_ms: float  # median wall time of one inference, counters on
    runs: int
    config: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def profile_ir(xml: str | Path, batch: int, threads: int, precision: str,
               images: np.ndarray | None = None, runs: int = PROFILE_RUNS,
               warmup: int = PROFILE_WARMUP, label: str = "") -> LayerProfile:
    """Run the IR `runs` times with PERF_COUNT=True and sum OpenVINO's per-layer real times
    (executed layers only) per layer type, averaged over the runs."""
    import openvino as ov

    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    core = ov.Core()
    model = core.read_model(str(xml))
    config = compile_config(threads, precision, perf_count=True)
    if images is None:
        chw = [d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]
        images = np.random.default_rng(0).standard_normal((batch, *chw), dtype=np.float32)
    compiled = (compile_static(core, model, images.shape, config) if STATIC_BATCH
                else core.compile_model(model, DEVICE, config))
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(images, shared_memory=True))
    for _ in range(warmup):
        request.infer()
    totals: dict[str, float] = defaultdict(float)
    kernels: dict[str, set[str]] = defaultdict(set)
    wall = []
    for _ in range(runs):
        start = time.perf_counter()
        request.infer()
        wall.append((time.perf_counter() - start) * 1e3)
        for info in request.profiling_info:  # the last inference's counters
            if info.status == info.Status.EXECUTED:
                totals[info.node_type] += info.real_time.total_seconds() * 1e3 / runs
                kernels[info.node_type].add(info.exec_type)
    layers = sorted(totals.items(), key=lambda item: -item[1])
    return LayerProfile(model=label or str(xml), batch=batch, threads=threads,
                        precision=precision, layers=layers,
                        kernels={k: sorted(v) for k, v in kernels.items()},
                        layers_ms=sum(totals.values()), end_to_end_ms=statistics.median(wall),
                        runs=runs, config=config, versions=versions())


def openvino_profile(model: str | Workload, batch: int, threads: int, precision: str = "int8",
                     runs: int = PROFILE_RUNS, work_dir: str | Path | None = None) -> LayerProfile:
    """OpenVINO's per-layer profile of a model as ivit-bench deploys it (`ov-int8` or `ov-fp32`).

    `model`: a Workload (its ONNX export is used), or an ivit-bench model spec such as
    "deit_small" or "swin_tiny:img_size=112" (the workload is made in `work_dir`, default a
    temporary folder: the same checkpoint, float weights and calibration images as ivit-bench)."""
    if precision not in ("int8", "fp32"):
        raise ValueError(f"precision must be 'int8' or 'fp32', not '{precision}'")
    with contextlib.ExitStack() as stack:
        workload = model if isinstance(model, Workload) else None
        if workload is None:
            from ..workload import make_workload, parse_model

            spec = parse_model(model)
            folder = Path(work_dir) if work_dir else Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="ivit-ov-profile-")))
            workload = make_workload(spec, folder / "workload")
        xml = write_ir(workload, precision)
        return profile_ir(xml, batch, threads, precision, runs=runs, label=workload.key)


def openvino_layer_profile(model: str | Workload, batch: int, threads: int,
                           precision: str = "int8", **kwargs) -> list[tuple[str, float]]:
    """[(OpenVINO layer type, ms per inference)], slowest first (see `openvino_profile`)."""
    return openvino_profile(model, batch, threads, precision, **kwargs).layers


@contextlib.contextmanager
def _quiet_stdout():
    """NNCF's progress bars and log lines go to stderr, not into ivit-bench's table on stdout."""
    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        nncf_logger.setLevel(level)


def _plain(value) -> str | int | bool:
    if isinstance(value, bool | int):
        return value
    text = str(value)
    return text.split("'")[1] if text.startswith("<Type: '") else text.split(".")[-1]


OV_FP32 = OpenVINO("ov-fp32", "OpenVINO FP32", "fp32")
OV_INT8 = OpenVINO("ov-int8", "OpenVINO INT8", "int8")
