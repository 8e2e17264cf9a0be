"""Outputs of a benchmark run: a Markdown table, the JSON document and a latency plot.

    paths = write_results(results, folder)   # results.md, results.json, latency.png
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

COLUMNS = ("model", "batch", "engine", "median (ms)", "IQR (ms)", "images/s",
           "latency / ivit-tvm", "ratio IQR", "ratio min-max", "peak RSS (MiB)",
           "engine RSS (MiB)", "weights (MiB)", "status")
MAX_CELL = 160
NOTES = (
    "Latency: one call from a float32 NumPy batch (B, 3, H, W) to the logits, median of "
    "samples after warm-up; IQR = 75th - 25th percentile. Every engine runs the same saved "
    "batches, in its own process; all processes are loaded and warmed up first, then timed in "
    "alternating rounds (one sample per engine per round, order ABCD, DCBA, ABCD, ...), so a "
    "drift of the machine's speed hits every engine alike.",
    "latency / ivit-tvm: per round, an engine's sample divided by ivit-tvm's in the same "
    "round; the median over rounds, with the interquartile range and min-max of those "
    "per-round ratios (above 1: ivit-tvm is faster).",
    "Peak RSS: the measuring process's peak resident memory while loading and running, up to "
    "that batch. Engine RSS: that peak minus the process's RSS after importing the engine's "
    "libraries (tvm_ffi imports PyTorch when it is installed, so the TVM rows' totals include "
    "PyTorch's libraries).",
    "Status 'ok (others busy in K of N rounds)': in K of that batch's N rounds, other "
    "processes on the machine used at least 0.25 cores (sampled once per round, the measuring "
    "processes excluded); those rounds are listed below the table and in the JSON "
    "(\"rounds\").",
    "Weights: the deployed file (TVM: the exported library with weights as constants; ONNX "
    "Runtime: the .onnx file; OpenVINO: the IR .xml + .bin; PyTorch: the float state dict).",
    "Weights are random and scales calibrated on random images (latency does not depend on "
    "them); the float engines hold the quantized checkpoint's float weights.",
    "TVM FP32 scheduling effort: the same target and the same Relax pipeline as ivit-tvm, with "
    "the same kind of hand-written schedules (a register-blocked GEMM on packed weights, here "
    "with 16-lane FP32 FMA instead of VNNI, also for the patch embedding; parallel, vectorized "
    "attention matmuls; schedules.cpu.generic for everything else) and TVM's fast exp/erf/"
    "softmax: schedules/cpu/float_dense.py. Neither engine is MetaSchedule-tuned.",
)


def to_json(results: dict) -> str:
    return json.dumps(results, indent=2, sort_keys=False) + "\n"


def markdown(results: dict) -> str:
    """The table (skipped engines collapsed to one row each), its notes and the ratios."""
    machine, settings = results["machine"], results["settings"]
    others = [(r.get("other_load") or {}).get("max_cores", 0.0) for r in results["rows"]
              if r["status"] == "ok"]
    lines = [
        f"# ivit-bench {'(quick) ' if results['quick'] else ''}{machine['slug']} "
        f"{results['date']}",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {settings['threads']} threads, "
        f"llvm -mcpu={settings['mcpu']}; load average before {machine['load_before'][0]}, "
        f"after {machine.get('load_after', ['?'])[0]}; other processes used at most "
        f"{max(others, default=0.0):.2f} cores during any round; warm-up "
        f"{settings['warmup']}, then up to {settings['repeats']} alternating rounds per batch, "
        f"fewer if the slowest engine's samples would exceed {settings['budget_s']} s "
        "(at least 3).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 3 or i == len(COLUMNS) - 1 else "---:"
                       for i in range(len(COLUMNS))) + "|",
    ]
    for row in _table_rows(results["rows"]):
        lines.append("| " + " | ".join(_cell(text) for text in row) + " |")
    lines += ["", "Engines:", ""]
    notes = {}
    for row in results["rows"]:
        if row.get("notes"):
            notes.setdefault(row["engine_label"], row["notes"])
    lines += [f"- {label}: {text}" for label, text in notes.items()]
    lines += ["", "Notes:", ""] + [f"- {note}" for note in NOTES]
    flagged = contended_rounds(results)
    if flagged:
        lines += ["", "Rounds where other processes used the CPU:", ""] + flagged
    summary = ratio_summary(results["rows"])
    if summary:
        lines += ["", "Ratios (engine latency / ivit-tvm latency):", ""] + summary
    return "\n".join(lines) + "\n"


def contended_rounds(results: dict) -> list[str]:
    """One line per model and batch with flagged rounds: which, and the cores others used."""
    labels = {m["key"]: m["label"] for m in results.get("models", [])}
    lines = []
    for info in results.get("rounds", []):
        if info["contended"]:
            used = ", ".join(f"{i + 1} ({info['other_cores'][i]:.2f} cores)"
                             for i in info["contended"])
            lines.append(f"- {labels.get(info['model'], info['model'])}, batch {info['batch']}: "
                         f"rounds {used} of {len(info['other_cores'])}")
    return lines


def ratio_summary(rows: list[dict]) -> list[str]:
    """One line per model and batch: every other engine's per-round latency ratio to ivit-tvm
    (median, and min-max over rounds)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and row.get("ratio_to_reference") is not None:
            groups[(row["model_label"], row["batch"])].append(row)
    lines = []
    for (label, batch), group in groups.items():
        parts = [f"{r['engine_label']} {r['ratio_to_reference']:.2f}x "
                 f"({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" for r in group
                 if r["engine"] != "ivit-tvm"]
        if parts:
            lines.append(f"- {label}, batch {batch}: " + ", ".join(parts))
    return lines


def _table_rows(rows: list[dict]) -> list[list[str]]:
    skipped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    out = []
    for row in rows:
        if row["status"] == "skipped":
            skipped[(row["engine_label"], row["reason"])].append(row)
            continue
        if row["status"] != "ok":
            out.append([row["model_label"], str(row["batch"]), row["engine_label"]]
                       + ["—"] * (len(COLUMNS) - 4) + [f"failed: {row['reason']}"])
            continue
        ratio = row.get("ratio_to_reference")
        out.append([
            row["model_label"], str(row["batch"]), row["engine_label"],
            f"{row['median_ms']:.2f}", f"{row['iqr_ms']:.2f}", f"{row['images_per_s']:.1f}",
            "—" if ratio is None else f"{ratio:.2f}",
            "—" if ratio is None else f"{row['ratio_p25']:.2f}-{row['ratio_p75']:.2f}",
            "—" if ratio is None else f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}",
            _mib(row.get("peak_rss_mib")), _mib(row.get("engine_rss_mib")),
            f"{row['weights_mib']:.1f}", _status(row),
        ])
    models = {r["model_label"] for r in rows}
    for (label, reason), group in skipped.items():
        every_model = {r["model_label"] for r in group} == models
        out.append(["all" if every_model else ", ".join(sorted({r["model_label"] for r in group})),
                    "all", label] + ["—"] * (len(COLUMNS) - 4) + [f"skipped: {reason}"])
    return out


def _status(row: dict) -> str:
    """ok, or ok with the number of rounds of its batch where other processes used the CPU."""
    load = row.get("other_load") or {}
    busy = load.get("contended_rounds", 0)
    return f"ok (others busy in {busy} of {load['rounds']} rounds)" if busy else "ok"


def _cell(text: str) -> str:
    """One table cell: pipes escaped, long reasons cut (the JSON keeps them whole)."""
    text = text.replace("|", "\\|")
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def _mib(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def plot(results: dict, path: Path) -> None:
    """Median latency against batch size, one panel per model, one line per engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model_label"] for r in results["rows"]))
    engines = list(dict.fromkeys(r["engine_label"] for r in results["rows"]))
    colors = {label: f"C{i % 10}" for i, label in enumerate(engines)}  # same in every panel
    batches = results["settings"]["batches"]
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 4),
                             squeeze=False)
    for ax, model in zip(axes[0], models, strict=False):
        series: dict[str, list[dict]] = defaultdict(list)
        for row in results["rows"]:
            if row["model_label"] == model and row["status"] == "ok":
                series[row["engine_label"]].append(row)
        for label, points in series.items():
            points.sort(key=lambda r: r["batch"])
            x = [r["batch"] for r in points]
            y = [r["median_ms"] for r in points]
            err = [[r["median_ms"] - r["p25_ms"] for r in points],
                   [r["p75_ms"] - r["median_ms"] for r in points]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label, color=colors[label])
        ax.set_title(model)
        ax.set_xlabel("batch size")
        ax.set_ylabel("median latency (ms)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(batches, [str(b) for b in batches])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    fig.suptitle(f"ivit-bench {results['machine']['slug']} {results['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(results: dict, folder: Path) -> dict[str, Path]:
    """Write results.json, results.md and latency.png into `folder`; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "results.json", "markdown": folder / "results.md",
             "plot": folder / "latency.png"}
    paths["json"].write_text(to_json(results))
    paths["markdown"].write_text(markdown(results))
    plot(results, paths["plot"])
    return paths
