"""ivit-bench: `--quick` on a tiny DeiT gives a complete, well-formed table, JSON and plot for
the CPU engines (speed is not checked), and engines that cannot run are skipped, not fatal."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from ivit_tvm.benchmarks.cli import RESULTS_ROOT, bench_cmd
from ivit_tvm.benchmarks.engines import CPU_ENGINES, REFERENCE
from ivit_tvm.benchmarks.engines.base import Engine
from ivit_tvm.benchmarks.harness import measure
from ivit_tvm.benchmarks.report import COLUMNS
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


def test_ratios_are_relative_to_ivit_tvm(results):
    rows = {r["engine"]: r for r in results["rows"] if r["status"] == "ok"}
    reference = rows[REFERENCE]["median_ms"]
    assert rows[REFERENCE]["ratio_to_reference"] == 1.0
    for row in rows.values():
        assert math.isclose(row["ratio_to_reference"], row["median_ms"] / reference)


def test_markdown_table_has_every_column_and_engine(quick_run, results):
    result, folder = quick_run
    text = (folder / "results.md").read_text()
    assert result.stdout == text
    header = "| " + " | ".join(COLUMNS) + " |"
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


def test_measure_reports_quartiles_of_at_least_three_samples():
    calls = []
    stats = measure(lambda: calls.append(1), batch=4, warmup=2, repeats=5, budget_s=0.0)
    assert stats["repeats"] == 3 and stats["calls_per_sample"] >= 1
    assert stats["p25_ms"] <= stats["median_ms"] <= stats["p75_ms"]
    assert len(calls) == 2 + 1 + 3 * stats["calls_per_sample"]
