"""ivit-bench's OpenVINO engines: `--quick -e ov-int8 -e ov-fp32` measures both and records
their versions and settings; the INT8 IR is really quantized (FakeQuantize ops, int8 weights,
int8 kernels at run time) and still predicts like the float model; the per-layer profile sums
OpenVINO's counters per layer type; a failing import skips the engines with a reason."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.metadata
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from ivit_tvm.benchmarks.cli import bench_cmd
from ivit_tvm.benchmarks.engines import OV_FP32, OV_INT8
from ivit_tvm.benchmarks.engines.openvino import (
    LayerProfile,
    compile_config,
    compile_static,
    openvino_profile,
    profile_ir,
)
from ivit_tvm.benchmarks.workload import INPUT_NAME

ov = pytest.importorskip("openvino", reason="openvino is not installed")
pytest.importorskip("nncf", reason="nncf is not installed")

KEYS = ("ov-int8", "ov-fp32")
AGREEMENT_IMAGES = 64
MIN_TOP1_AGREEMENT = 0.6  # measured 0.77 on the quick model; ~0.25 by chance


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """`ivit-bench --quick -e ov-int8 -e ov-fp32`, keeping the work folder: (result, results
    document, the workload's folder)."""
    root = tmp_path_factory.mktemp("ov-bench")
    work = root / "work"
    args = ["--quick", "-e", KEYS[0], "-e", KEYS[1], "--results-dir", str(root / "results"),
            "--work-dir", str(work)]
    result = CliRunner().invoke(bench_cmd, args)
    assert result.exit_code == 0, result.output
    (folder,) = (root / "results").iterdir()
    (model_folder,) = (p.parent for p in work.glob("*/fp32.onnx"))
    return result, json.loads((folder / "results.json").read_text()), model_folder


@pytest.fixture(scope="module")
def rows(quick_run) -> dict[str, dict]:
    _result, results, _folder = quick_run
    return {row["engine"]: row for row in results["rows"]}


def test_both_engines_are_measured(rows):
    assert set(rows) == set(KEYS)
    for key in KEYS:
        row = rows[key]
        assert row["status"] == "ok", row
        assert row["output_shape"] == [1, 10] and row["median_ms"] > 0
        assert row["weights_bytes"] > 0


def test_rows_carry_versions_and_settings(quick_run, rows):
    _result, results, _folder = quick_run
    threads = results["settings"]["threads"]
    installed = importlib.metadata.version("openvino")
    for key in KEYS:
        details = rows[key]["prepare_details"]
        assert details["versions"]["openvino"] == installed
        assert f"OpenVINO {installed}" in rows[key]["notes"]
        assert details["compile_config"] == compile_config(threads, rows[key]["precision"])
        resolved = details["resolved"]
        assert resolved["INFERENCE_NUM_THREADS"] == threads
        assert resolved["NUM_STREAMS"] == 1 and resolved["PERFORMANCE_HINT"] == "LATENCY"
    assert rows["ov-fp32"]["prepare_details"]["resolved"]["INFERENCE_PRECISION_HINT"] == "float32"
    int8 = rows["ov-int8"]["prepare_details"]
    assert int8["nncf"]["model_type"] == "TRANSFORMER"
    assert int8["versions"]["nncf"] == importlib.metadata.version("nncf")
    assert f"NNCF {int8['versions']['nncf']}" in rows["ov-int8"]["notes"]


def test_table_names_both_engines_with_their_versions(quick_run):
    result, _results, _folder = quick_run
    version = importlib.metadata.version("openvino")
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    for label in (OV_INT8.label, OV_FP32.label):
        assert any(f"| {label} |" in line for line in table), label
        assert f"- {label}: OpenVINO {version}" in result.stdout


def test_int8_ir_holds_int8_ops_and_runs_int8_kernels(quick_run):
    _result, _results, folder = quick_run
    core = ov.Core()
    model = core.read_model(str(folder / "ov_int8.xml"))
    types = [op.get_type_name() for op in model.get_ops()]
    int8_weights = [op for op in model.get_ops() if op.get_type_name() == "Constant"
                    and op.get_output_element_type(0).get_type_name() == "i8"]
    assert types.count("FakeQuantize") > 0 and len(int8_weights) > 0
    float_model = core.read_model(str(folder / "ov_fp32.xml"))
    assert "FakeQuantize" not in {op.get_type_name() for op in float_model.get_ops()}
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": 1})
    executed = {(op.get_rt_info()["layerType"].astype(str),
                 op.get_rt_info()["runtimePrecision"].astype(str))
                for op in compiled.get_runtime_model().get_ops()}
    assert {kind for kind, precision in executed if precision in ("i8", "u8")} \
        & {"FullyConnected", "MatMul", "Convolution"}, sorted(executed)


def test_int8_top1_agrees_with_the_float_model(quick_run):
    """The float model is ONNX Runtime on the exported ONNX (not OpenVINO), on images that were
    not in the calibration set; the INT8 logits differ from it (they are really quantized),
    but the top-1 class agrees on most images."""
    import onnxruntime as ort

    _result, _results, folder = quick_run
    images = np.random.default_rng(1).standard_normal((AGREEMENT_IMAGES, 3, 32, 32),
                                                      dtype=np.float32)
    session = ort.InferenceSession(str(folder / "fp32.onnx"), providers=["CPUExecutionProvider"])
    reference = session.run(None, {INPUT_NAME: images})[0]
    compiled = ov.Core().compile_model(str(folder / "ov_int8.xml"), "CPU",
                                       {"INFERENCE_NUM_THREADS": 1})
    int8 = compiled({0: images})[0]
    assert int8.shape == reference.shape
    assert len(set(reference.argmax(1).tolist())) >= 3  # the check is not trivially 100%
    assert np.abs(int8 - reference).max() > 1e-3  # quantized, not the float model again
    agreement = float((int8.argmax(1) == reference.argmax(1)).mean())
    assert agreement >= MIN_TOP1_AGREEMENT, agreement


def test_static_compile_fixes_the_batch_and_keeps_the_model_dynamic(quick_run):
    _result, _results, folder = quick_run
    core = ov.Core()
    model = core.read_model(str(folder / "ov_fp32.xml"))
    compiled = compile_static(core, model, (3, 3, 32, 32), compile_config(1, "fp32"))
    assert list(compiled.inputs[0].get_shape()) == [3, 3, 32, 32]
    assert model.inputs[0].get_partial_shape().is_dynamic
    images = np.random.default_rng(2).standard_normal((3, 3, 32, 32), dtype=np.float32)
    assert compiled({0: images})[0].shape == (3, 10)


def test_layer_profile_sums_openvino_counters_per_layer_type(quick_run):
    _result, _results, folder = quick_run
    profile = profile_ir(folder / "ov_int8.xml", batch=2, threads=1, precision="int8", runs=3,
                         warmup=1)
    assert isinstance(profile, LayerProfile) and profile.batch == 2 and profile.runs == 3
    types = [kind for kind, _ms in profile.layers]
    times = [ms for _kind, ms in profile.layers]
    assert len(types) == len(set(types)) > 3
    assert all(ms >= 0 for ms in times) and times == sorted(times, reverse=True)
    assert profile.layers_ms == pytest.approx(sum(times)) and profile.layers_ms > 0
    assert profile.end_to_end_ms > 0 and profile.config["PERF_COUNT"] is True
    kernels = [k for kind in ("FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul")
               for k in profile.kernels.get(kind, [])]
    assert any("i8" in k.lower() for k in kernels), profile.kernels
    json.dumps(profile.to_dict())  # plain data for ivit-profile's JSON


def test_profile_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="precision must be"):
        openvino_profile("deit_tiny", batch=1, threads=1, precision="fp16")


class _BrokenOpenVINO(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `openvino` (it is installed) but fails to load it, like a missing shared library."""

    def find_spec(self, name, path=None, target=None):
        if name == "openvino" or name.startswith("openvino."):
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError("libopenvino.so.2026.4.1: cannot open shared object file")


@pytest.fixture
def broken_openvino(monkeypatch):
    for name in [n for n in sys.modules if n == "openvino" or n.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_BrokenOpenVINO(), *sys.meta_path])


def test_failing_import_skips_with_a_one_line_reason(broken_openvino):
    for engine in (OV_INT8, OV_FP32):
        reason = engine.skip_reason()
        assert reason.startswith("openvino fails to import: ImportError: libopenvino"), reason
        assert "\n" not in reason


def test_failing_import_gives_skipped_rows_not_a_crash(broken_openvino, tmp_path: Path):
    result = CliRunner().invoke(bench_cmd, ["--quick", "-e", KEYS[0], "-e", KEYS[1],
                                            "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    rows = json.loads((folder / "results.json").read_text())["rows"]
    assert {row["engine"] for row in rows} == set(KEYS)
    assert all(row["status"] == "skipped" and "fails to import" in row["reason"] for row in rows)
    assert "skipped: openvino fails to import" in result.stdout
