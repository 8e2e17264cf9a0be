"""ivit-bench: `--quick` on a tiny DeiT gives a complete, well-formed table, JSON and plot for
the CPU engines (speed is not checked), and engines that cannot run are skipped, not fatal.
The interleaved rounds (order, per-round ratios, flagged rounds) are checked on fake timings."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import pytest
from click.testing import CliRunner
from ivit_tvm.benchmarks.cli import RESULTS_ROOT, bench_cmd
from ivit_tvm.benchmarks.engines import CPU_ENGINES, REFERENCE
from ivit_tvm.benchmarks.engines.base import Engine
from ivit_tvm.benchmarks.harness import (
    CONTENDED_CORES,
    MIN_REPEATS,
    WorkerError,
    _batch_rows,
    calibrate,
    round_count,
    round_orders,
    round_ratios,
    run_rounds,
    time_sample,
)
from ivit_tvm.benchmarks.report import COLUMNS, markdown
from ivit_tvm.benchmarks.workload import parse_model

TIMING_FIELDS = ("median_ms", "p25_ms", "p75_ms", "iqr_ms", "min_ms", "images_per_s")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One `ivit-bench --quick` run: (exit code, stdout, results folder)."""
    root = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(bench_cmd, ["--quick", "--results-dir", str(root)])
    folders = list(root.iterdir())
    return result, folders[0] if len(folders) == 1 else None


@pytest.fixture(scope="module")
def results(quick_run) -> dict:
    _result, folder = quick_run
    return json.loads((folder / "results.json").read_text())


def test_quick_run_succeeds_and_writes_one_results_folder(quick_run):
    result, folder = quick_run
    assert result.exit_code == 0, result.output
    assert folder is not None and folder.name.endswith("-quick")
    assert {p.name for p in folder.iterdir()} == {"results.json", "results.md", "latency.png"}


def test_every_cpu_engine_is_measured(results):
    ok = {row["engine"] for row in results["rows"] if row["status"] == "ok"}
    assert set(CPU_ENGINES) <= ok, [r for r in results["rows"] if r["status"] != "ok"]


def test_measured_rows_have_timing_memory_and_weights(results):
    for row in (r for r in results["rows"] if r["status"] == "ok"):
        for field in TIMING_FIELDS:
            assert isinstance(row[field], float) and row[field] > 0, (row["engine"], field)
        assert row["p25_ms"] <= row["median_ms"] <= row["p75_ms"]
        assert math.isclose(row["images_per_s"], row["batch"] / row["median_ms"] * 1e3)
        assert row["repeats"] >= 3 and row["weights_bytes"] > 0 and row["peak_rss_mib"] > 0
        assert row["output_shape"] == [row["batch"], 10], row["engine"]
        assert row["other_load"]["mean_cores"] >= 0


def test_rows_without_measurements_give_a_reason(results):
    for row in (r for r in results["rows"] if r["status"] != "ok"):
        assert row["status"] == "skipped" and row["reason"], row
        assert "median_ms" not in row


def test_every_engine_has_a_row_for_every_batch(results):
    keys = {engine["key"] for engine in results["engines"]}
    assert {(r["engine"], r["batch"]) for r in results["rows"]} == {(k, 1) for k in keys}


def test_ratios_are_per_round_relative_to_ivit_tvm(results):
    rows = {r["engine"]: r for r in results["rows"] if r["status"] == "ok"}
    reference = rows[REFERENCE]["samples_ms"]
    assert rows[REFERENCE]["ratio_to_reference"] == 1.0
    assert rows[REFERENCE]["ratio_min"] == rows[REFERENCE]["ratio_max"] == 1.0
    for row in rows.values():
        assert len(row["samples_ms"]) == len(reference) == row["repeats"] >= MIN_REPEATS
        per_round = [mine / ref for mine, ref in zip(row["samples_ms"], reference, strict=True)]
        assert math.isclose(row["ratio_to_reference"], statistics.median(per_round))
        assert row["ratio_min"] <= row["ratio_p25"] <= row["ratio_to_reference"]
        assert row["ratio_to_reference"] <= row["ratio_p75"] <= row["ratio_max"]


def test_rounds_are_recorded_with_the_other_processes_cpu(results):
    (info,) = results["rounds"]
    measured = [r for r in results["rows"] if r["status"] == "ok"]
    assert sorted(info["order"]) == sorted(r["engine"] for r in measured)
    assert len(info["other_cores"]) == measured[0]["repeats"]
    assert info["contended"] == [i for i, c in enumerate(info["other_cores"])
                                 if c >= CONTENDED_CORES]


def test_markdown_table_has_every_column_and_engine(quick_run, results):
    result, folder = quick_run
    text = (folder / "results.md").read_text()
    assert result.stdout == text
    header = "| " + " | ".join(COLUMNS) + " |"
    assert {"latency / ivit-tvm", "ratio IQR", "ratio min-max"} <= set(COLUMNS)
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert table[0] == header and set(table[1]) <= set("|-:")
    assert all(len(re.findall(r"(?<!\\)\|", line)) == len(COLUMNS) + 1 for line in table)
    for engine in results["engines"]:
        assert any(f"| {engine['label']} |" in line for line in table[2:]), engine["label"]
    skipped = {e["label"] for e in results["engines"] if e["skip_reason"]}
    for line in table[2:]:
        label = line.split(" | ")[2]
        status = line.rsplit(" | ", 1)[1]
        assert status.startswith("ok") or ("skipped: " in line and label in skipped)


def test_plot_is_a_png(quick_run):
    _result, folder = quick_run
    data = (folder / "latency.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 1000


def test_engine_without_its_package_is_skipped_with_a_reason():
    class Missing(Engine):
        key, modules = "missing", ("no_such_package_for_ivit_bench",)

    assert Missing().skip_reason() == "no_such_package_for_ivit_bench is not installed"


def test_results_go_under_the_current_directory_by_default():
    """Not inside the installed package: `--help` names the cwd-relative default."""
    result = CliRunner().invoke(bench_cmd, ["--help"])
    assert result.exit_code == 0, result.output
    assert "[default:benchmark-results]" in "".join(result.output.split())
    assert not RESULTS_ROOT.is_absolute()


def test_unknown_engine_is_a_one_line_error(tmp_path: Path):
    result = CliRunner().invoke(bench_cmd, ["--quick", "-e", "nope", "--results-dir",
                                            str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("ivit-bench: error: unknown engine(s) ['nope']")


def test_model_spec_parses_overrides_and_tuples():
    spec = parse_model("swin_tiny:img_size=32,depths=2/2,num_heads=3/6,mlp_ratio=2.5")
    assert spec.name == "swin_tiny"
    assert dict(spec.overrides) == {"img_size": 32, "depths": (2, 2), "num_heads": (3, 6),
                                    "mlp_ratio": 2.5}
    assert spec.label == "Swin-T (img_size=32, depths=2/2, num_heads=3/6, mlp_ratio=2.5)"


@pytest.mark.parametrize("text", ["deit_tiny:img_size", "deit_tiny:img_size=big",
                                  "deit_tiny:nope=3", "no_such_model"])
def test_bad_model_spec_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_model(text)


def test_calibration_groups_short_calls_into_one_sample():
    calls = []
    single_ms, number = calibrate(lambda: calls.append(1), warmup=2)
    assert len(calls) == 3 and single_ms > 0 and number >= 1
    assert time_sample(lambda: calls.append(1), number) > 0 and len(calls) == 3 + number


def test_round_order_alternates():
    orders = round_orders(["A", "B", "C", "D"], 5)
    assert ["".join(o) for o in orders] == ["ABCD", "DCBA", "ABCD", "DCBA", "ABCD"]
    assert round_orders(["A"], 2) == [["A"], ["A"]]


def test_round_count_fits_the_slowest_engine_into_the_budget():
    assert round_count([10.0, 500.0], repeats=30, budget_s=5.0) == 10
    assert round_count([10.0, 20.0], repeats=30, budget_s=5.0) == 30
    assert round_count([10_000.0], repeats=30, budget_s=5.0) == MIN_REPEATS


def test_ratio_is_exact_when_the_machine_drifts_alike_for_every_engine():
    """Absolute times drift 2x over the rounds; engine A is twice as slow as the reference in
    every round: its per-round ratio is exactly 2 with no spread, though its latency spreads."""
    drift = [1.0, 1.25, 1.5, 2.0, 1.75, 1.0]
    samples = {"ref": [10.0 * d for d in drift], "A": [20.0 * d for d in drift],
               "B": [5.0 * d for d in drift]}
    assert round_ratios(samples, "ref") == {"ref": [1.0] * 6, "A": [2.0] * 6, "B": [0.5] * 6}
    engines = {key: {"batches": {"1": {"status": "ok", "calls_per_sample": 1}}}
               for key in samples}
    result = {"orders": round_orders(list(samples), 6), "samples": samples, "failed": {},
              "other_cores": [0.0, 0.0, 1.5, 0.0, 0.3, 0.0]}
    info = _batch_rows(engines, 1, result, "ref", waited=0.0)
    row = engines["A"]["batches"]["1"]
    assert row["ratio_to_reference"] == row["ratio_min"] == row["ratio_max"] == 2.0
    assert row["ratio_p25"] == row["ratio_p75"] == 2.0
    assert row["max_ms"] == 2 * row["min_ms"]  # the drift shows in the latency, not the ratio
    assert engines["B"]["batches"]["1"]["ratio_to_reference"] == 0.5
    assert info["contended"] == [2, 4] and row["other_load"]["contended_rounds"] == 2


class FakeWorker:
    """Answers sample requests from a list of per-round times; records the order asked."""

    def __init__(self, key: str, times: list[float], log: list[str], fail_at: int | None = None):
        self.key, self.times, self.log, self.fail_at = key, list(times), log, fail_at

    def request(self, message: dict, timeout: float) -> dict:
        self.log.append(self.key)
        if self.fail_at is not None and len(self.log) > self.fail_at:
            raise WorkerError("measuring process failed: boom")
        return {"ms": self.times.pop(0)}


def test_run_rounds_asks_engines_in_alternating_order_and_drops_a_failed_one():
    log: list[str] = []
    workers = {"A": FakeWorker("A", [1, 2, 3], log), "B": FakeWorker("B", [2, 4, 6], log),
               "C": FakeWorker("C", [5, 5, 5], log, fail_at=4)}
    result = run_rounds(workers, 1, {"A": 1.0, "B": 1.0, "C": 1.0},
                        {"repeats": 3, "budget_s": 10.0}, settle_s=0.0)
    assert log[:6] == ["A", "B", "C", "C", "B", "A"]
    assert result["samples"] == {"A": [1, 2, 3], "B": [2, 4, 6]}
    assert result["failed"] == {"C": "measuring process failed: boom"}
    assert round_ratios(result["samples"], "A")["B"] == [2.0, 2.0, 2.0]


def test_markdown_flags_contended_rounds():
    drift = [1.0, 2.0, 1.5]
    row = {"model": "m", "model_label": "M", "engine": REFERENCE, "engine_label": "ivit-tvm",
           "batch": 1, "status": "ok", "weights_mib": 1.0, "notes": ""}
    engines = {REFERENCE: {"batches": {"1": {"status": "ok"}}}}
    info = _batch_rows(engines, 1, {"orders": [[REFERENCE]] * 3, "failed": {},
                                    "samples": {REFERENCE: drift},
                                    "other_cores": [0.0, 0.9, 0.0]}, REFERENCE, 0.0)
    results = {"quick": True, "date": "d", "models": [{"key": "m", "label": "M"}],
               "machine": {"slug": "s", "cpu": "c", "cores": 2, "load_before": [0.0]},
               "settings": {"threads": 2, "mcpu": "x", "warmup": 1, "repeats": 3,
                            "budget_s": 1.0},
               "rows": [{**row, **engines[REFERENCE]["batches"]["1"]}],
               "rounds": [{"model": "m", "batch": 1, **info}]}
    text = markdown(results)
    assert "ok (others busy in 1 of 3 rounds)" in text
    assert "- M, batch 1: rounds 2 (0.90 cores) of 3" in text
