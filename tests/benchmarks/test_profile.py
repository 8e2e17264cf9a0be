"""ivit-profile: every kernel of a compiled DeiT and Swin falls into a known kind (a new kernel
name no rule knows fails here), the kinds and the VM overhead add up to the end-to-end time,
the kernels of one instrumented call fit inside that call, and the JSON and Markdown carry
what the README promises. Speed is not checked."""

from __future__ import annotations

import json
import math

import pytest
import support
from click.testing import CliRunner
from ivit_tvm.benchmarks.profile import (
    KERNEL_KINDS,
    OTHER,
    SCHEMA,
    VM_OVERHEAD,
    classify,
    measure_artifact,
    model_spec,
    openvino_kind,
    profile_cmd,
    summarize,
)
from ivit_tvm.benchmarks.profile_worker import CallRecorder, merge_runs
from ivit_tvm.benchmarks.workload import model_config_of, parse_model
from ivit_tvm.schedules.backend import make_target

from ivit_tvm.compile import compile_model
from ivit_tvm.models import model_config

BATCHES = (1, 2)
KIND_FIELDS = {"kind": str, "ms": float, "best_ms": float, "percent": float, "calls": int,
               "kernels": int}


@pytest.fixture(scope="module")
def llvm():
    return make_target("llvm")


@pytest.fixture(scope="module")
def deit_artifact(tmp_path_factory, llvm):
    out = tmp_path_factory.mktemp("profile") / "deit.ivit"
    compile_model(support.quantized(support.DEIT), llvm, out, progress=False)
    return out


@pytest.fixture(scope="module")
def profile_run(deit_artifact, tmp_path_factory):
    """One `ivit-profile` of the reduced DeiT at batches 1 and 2: (result, JSON document)."""
    path = tmp_path_factory.mktemp("profile-out") / "profile.json"
    args = [str(deit_artifact), "--repeat", "3", "--warmup", "1", "--threads", "1",
            "--json", str(path), "--quiet"] + [f"-b{b}" for b in BATCHES]
    result = CliRunner().invoke(profile_cmd, args)
    doc = json.loads(path.read_text()) if path.is_file() else None
    return result, doc


# ---- classification ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kind", [
    ("fused_fused_ivit_dense2_ivit_requantize5_ivit_requantize_add71", "dense GEMM"),
    ("fused_ivit_dense3_ivit_requantize61", "dense GEMM"),
    ("ivit_dense51", "dense GEMM"),
    ("fused_ivit_batch_matmul_ivit_requantize14", "attention matmul"),
    ("ivit_batch_matmul1", "attention matmul"),
    ("ivit_shiftmax2", "Shiftmax"),
    ("fused_ivit_shiftmax_masked1_ivit_requantize3", "Shiftmax"),
    ("fused_ivit_shiftgelu3_ivit_requantize16", "ShiftGELU"),
    ("fused_ivit_layernorm_strided_slice3", "I-LayerNorm"),
    ("ivit_quantize_input", "input quantize"),
    ("ivit_requantize15", "requantize"),
    ("fused_broadcast_to_concatenate_broadcast_to1_ivit_requantize_add", "requantize"),
    ("fused_cast_sum", "token sum"),
    ("transpose2", "layout/copies"),
    ("strided_slice1", "layout/copies"),
    ("take3", "layout/copies"),
    ("vm.builtin.alloc_tensor", VM_OVERHEAD),
    ("shape_func1", VM_OVERHEAD),
    ("some_new_kernel", OTHER),
    ("ivit_densest", OTHER),  # whole words only
])
def test_names_are_classified_by_the_shared_names(name, kind):
    assert classify(name) == kind


@pytest.mark.parametrize("layer_type, kind", [
    ("FullyConnectedQuantizedLegacy", "dense GEMM"), ("FullyConnected", "dense GEMM"),
    ("MatMul", "attention matmul"), ("MVN", "I-LayerNorm"), ("Softmax", "Shiftmax"),
    ("Concat", "layout/copies"), ("SomethingNew", OTHER)])
def test_openvino_layer_types_map_to_the_nearest_kind(layer_type, kind):
    assert openvino_kind(layer_type) == kind


def test_nested_vm_functions_are_vm_overhead():
    assert classify("main_int8", nested=True) == VM_OVERHEAD


def test_every_kernel_of_a_compiled_swin_has_a_known_kind(tmp_path, llvm):
    """Swin adds masked Shiftmax, rolls (take), window reshapes and the token sum."""
    out = tmp_path / "swin.ivit"
    compile_model(support.quantized(support.SWIN), llvm, out, progress=False)
    raw = measure_artifact(out, batch=1, repeat=1, warmup=0, threads=1)
    kinds = {name: classify(name, info["nested"]) for name, info in raw["calls"].items()}
    assert OTHER not in kinds.values(), [n for n, k in kinds.items() if k == OTHER]
    assert {"dense GEMM", "attention matmul", "Shiftmax", "ShiftGELU", "I-LayerNorm",
            "token sum", "layout/copies"} <= set(kinds.values())
    assert any("shiftmax_masked" in name for name in kinds)


# ---- the instrument and the arithmetic, on fake calls --------------------------------------------

def test_recorder_subtracts_nested_calls_from_their_caller():
    recorder = CallRecorder()
    recorder(None, "main_int8", True, None)
    recorder(None, "kernel", True, None)
    recorder(None, "kernel", False, None)
    recorder(None, "vm.builtin.null_value", True, None)
    recorder(None, "vm.builtin.null_value", False, None)
    recorder(None, "main_int8", False, None)
    calls, exclusive_ns, nested = recorder.totals["main_int8"]
    assert (calls, nested) == (1, True) and exclusive_ns >= 0
    assert recorder.totals["kernel"][:1] == [1] and recorder.totals["kernel"][2] is False
    assert not recorder.stack


def test_runs_that_call_differently_are_refused():
    with pytest.raises(RuntimeError, match="called"):
        merge_runs([{"k": [2, 10, False]}, {"k": [3, 10, False]}])


def fake_raw() -> dict:
    calls = {"main_int8": {"calls": 1, "nested": True, "ms": [0.5, 0.6, 0.4]},
             "vm.builtin.alloc_tensor": {"calls": 40, "nested": False, "ms": [0.2, 0.2, 0.3]},
             "fused_ivit_dense_ivit_requantize1": {"calls": 4, "nested": False,
                                                   "ms": [3.0, 4.0, 3.5]},
             "ivit_shiftmax": {"calls": 2, "nested": False, "ms": [1.0, 1.2, 0.9]},
             "transpose1": {"calls": 6, "nested": False, "ms": [0.1, 0.1, 0.2]}}
    return {"threads": 1, "runtime_only": True, "batch": 2, "entry": "main",
            "end_to_end_ms": [6.0, 6.5, 5.5], "instrumented_ms": [6.5, 7.0, 6.0],
            "cpu_seconds": 0.03, "wall_seconds": 0.04,
            "calls": calls, "order": list(calls)}


def test_summary_rows_add_up_to_the_end_to_end_time():
    result = summarize(fake_raw())
    rows = {row["kind"]: row for row in result["kinds"]}
    assert rows["dense GEMM"]["ms"] == 3.5 and rows["dense GEMM"]["calls"] == 4
    assert rows["Shiftmax"]["ms"] == 1.0 and rows["layout/copies"]["calls"] == 6
    assert math.isclose(result["kernels_ms"], 3.5 + 1.0 + 0.1)
    assert math.isclose(rows[VM_OVERHEAD]["ms"], 6.0 - result["kernels_ms"])
    assert rows[VM_OVERHEAD]["calls"] == 40 and rows["dense GEMM"]["best_ms"] == 3.0
    assert math.isclose(rows[VM_OVERHEAD]["best_ms"], 5.5 - (3.0 + 0.9 + 0.1))
    assert math.isclose(result["cpu_share"], 0.75)
    assert math.isclose(sum(r["ms"] for r in result["kinds"]), result["end_to_end_ms"]["median"])
    assert math.isclose(sum(r["percent"] for r in result["kinds"]), 100.0)
    assert [r["ms"] for r in result["kinds"]] == sorted((r["ms"] for r in result["kinds"]),
                                                       reverse=True)
    assert {k["name"] for k in result["kernels"]} == {
        "fused_ivit_dense_ivit_requantize1", "ivit_shiftmax", "transpose1"}
    assert result["vm"]["functions"] == ["main_int8"] and result["per_image_ms"] == 3.0


@pytest.mark.parametrize("config", [support.DEIT, support.SWIN])
def test_model_spec_names_the_nearest_model_and_its_differences(config):
    spec = parse_model(model_spec(config.to_dict()))
    assert model_config_of(spec) == config
    assert spec.name == config_name(config)


def config_name(config) -> str:
    return "deit_tiny" if config.arch == "vit" else "swin_tiny"


def test_model_spec_of_a_named_model_is_its_name():
    assert model_spec(model_config("deit_small").to_dict()) == "deit_small"
    assert model_spec(model_config("swin_tiny").to_dict()) == "swin_tiny"


# ---- a real profile ----------------------------------------------------------------------------

def test_profile_command_succeeds(profile_run):
    result, doc = profile_run
    assert result.exit_code == 0, result.output
    assert doc is not None and doc["schema"] == SCHEMA


def test_every_kernel_of_the_deit_has_a_known_kind(profile_run):
    _, doc = profile_run
    for batch in doc["batches"]:
        unknown = [k["name"] for k in batch["kernels"] if k["kind"] not in KERNEL_KINDS]
        assert not unknown, unknown
        kinds = {row["kind"] for row in batch["kinds"]}
        assert {"dense GEMM", "attention matmul", "Shiftmax", "ShiftGELU", "I-LayerNorm",
                "input quantize", "layout/copies", VM_OVERHEAD} <= kinds


def test_json_schema(profile_run):
    _, doc = profile_run
    assert doc["settings"]["batches"] == list(BATCHES) and doc["settings"]["threads"] == 1
    assert doc["model"] == model_spec(support.DEIT.to_dict()) and doc["config"]["depth"] == 2
    assert doc["machine"]["cpu"] and doc["target"]["kind"] == "llvm"
    assert [b["batch"] for b in doc["batches"]] == list(BATCHES)
    for batch in doc["batches"]:
        assert batch["runtime_only"] is True and batch["threads"] == 1 and batch["repeat"] == 3
        assert 0 < batch["cpu_share"] <= 1.05  # one thread: at most its wall time, give or take
        e2e = batch["end_to_end_ms"]
        assert 0 < e2e["min"] <= e2e["p25"] <= e2e["median"] <= e2e["p75"] <= e2e["max"]
        for row in batch["kinds"]:
            for field, kind in KIND_FIELDS.items():
                assert isinstance(row[field], kind), (row, field)
        assert len({row["kind"] for row in batch["kinds"]}) == len(batch["kinds"])
        assert batch["kernel_calls"] == sum(k["calls"] for k in batch["kernels"]) > 0
        assert all(k["ms"] >= 0 for k in batch["kernels"])


def test_kinds_and_overhead_add_up_and_kernels_fit_in_their_call(profile_run):
    _, doc = profile_run
    for batch in doc["batches"]:
        total = sum(row["ms"] for row in batch["kinds"])
        assert math.isclose(total, batch["end_to_end_ms"]["median"], rel_tol=1e-9)
        assert math.isclose(sum(r["percent"] for r in batch["kinds"]), 100.0)
        kernels = [r for r in batch["kinds"] if r["kind"] != VM_OVERHEAD]
        assert math.isclose(sum(r["ms"] for r in kernels), batch["kernels_ms"])
        # the kernels of one instrumented call ran inside that call (plain calls are other
        # calls: on a busy machine they may be faster than an instrumented call's kernels)
        for run in batch["runs"]:
            assert 0 < run["kernels_ms"] <= run["instrumented_ms"]
        assert batch["kernels_ms"] <= batch["instrumented_ms"]["median"]
        calls = {r["kind"]: r["calls"] for r in batch["kinds"]}
        assert calls["dense GEMM"] == support.DEIT.depth * 4 + 2  # qkv, proj, fc1, fc2; patch, head


def test_openvino_is_beside_it_or_skipped_with_a_reason(profile_run):
    _, doc = profile_run
    for batch in doc["batches"]:
        ov = batch["openvino"]
        assert ov["status"] in ("ok", "skipped"), ov
        if ov["status"] == "skipped":
            assert ov["reason"]
            continue
        assert ov["batch"] == batch["batch"] and ov["layers"]
        assert math.isclose(sum(layer["ms"] for layer in ov["layers"]), ov["layers_ms"])
        assert all(layer["type"] and layer["ms"] >= 0 for layer in ov["layers"])


def test_markdown_lists_every_kind(profile_run):
    result, doc = profile_run
    for batch in doc["batches"]:
        assert f"## Batch {batch['batch']}" in result.output
        for row in batch["kinds"]:
            assert f"| {row['kind']} | {row['ms']:.2f} |" in result.output


def test_a_fixed_batch_artifact_refuses_another_batch(tmp_path, llvm):
    out = tmp_path / "fixed.ivit"
    compile_model(support.quantized(support.DEIT), llvm, out, batch=2, progress=False)
    result = CliRunner().invoke(profile_cmd, [str(out), "-b", "3", "--no-openvino"])
    assert result.exit_code == 1 and "compiled for batch 2" in result.output


def test_bench_profile_flag_writes_a_profile_per_model(tmp_path):
    """`ivit-bench --quick --profile`: the profile of the artifact ivit-bench compiled."""
    from ivit_tvm.benchmarks.cli import QUICK_MODEL, bench_cmd

    result = CliRunner().invoke(bench_cmd, ["--quick", "--profile", "-e", "ivit-tvm", "-e",
                                            "ov-int8", "--results-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (folder,) = tmp_path.iterdir()
    (json_path,) = folder.glob("profile-*.json")
    assert json_path.with_suffix(".md").is_file()
    doc = json.loads(json_path.read_text())
    assert doc["schema"] == SCHEMA and doc["model"] == QUICK_MODEL
    (batch,) = doc["batches"]
    assert batch["batch"] == 1 and batch["kernels"]
    assert all(k["kind"] in KERNEL_KINDS for k in batch["kernels"])
    assert batch["openvino"]["status"] in ("ok", "skipped"), batch["openvino"]


def test_bench_profile_needs_the_ivit_tvm_engine(tmp_path):
    from ivit_tvm.benchmarks.cli import bench_cmd

    result = CliRunner().invoke(bench_cmd, ["--quick", "--profile", "-e", "ort-int8",
                                            "--results-dir", str(tmp_path)])
    assert result.exit_code == 1 and "add -e ivit-tvm" in result.output
    assert not list(tmp_path.iterdir())
