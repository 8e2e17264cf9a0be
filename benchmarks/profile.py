"""ivit-profile: where a compiled ivit-tvm artifact spends its time, per kernel kind.

    ivit-profile deit_s.ivit -b 1 -b 8 --json profile.json --markdown profile.md

Every VM call of one inference is timed (benchmarks/profile_worker.py, a process with the TVM
runtime only, as a deployment runs the artifact) and each kernel is put into one kind by the
names the compile stages share (ivit_tvm/ops/names.py): dense GEMMs, attention matmuls,
Shiftmax, ShiftGELU, I-LayerNorm, input quantize, requantize, token sum (Swin's head) and
layout/copies. A fused kernel belongs to its first kind in KERNEL_KINDS (a GEMM with its
requantize fused is a GEMM). VM overhead = the end-to-end latency minus the kernels' sum: the
VM's own instructions, its builtins (allocation, shapes, views) and its shape functions.
Beside it, OpenVINO's own per-layer counters for the same architecture
(benchmarks/engines/openvino.py, `ov-int8` as ivit-bench deploys it), where OpenVINO runs.

Statistics: per repeat one plain call (end to end) and one instrumented call, alternating; a
kind's time is the median over repeats of its summed kernel time per call, the kernels' sum is
the sum of those medians, and percentages are of the median end-to-end time. Each timed
kernel call also holds the instrument's own cost (about 2 us; `instrument_floor_us`
in the JSON), so the VM overhead is, if anything, under-counted.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import click
from ivit_tvm.schedules.shape_order import SHAPE_FUNC

from ivit_tvm.cli.common import CONTEXT, note, reports_errors
from ivit_tvm.ops import names

SCHEMA = "ivit-profile/1"
DEFAULT_REPEAT, DEFAULT_WARMUP = 20, 3
WORKER_TIMEOUT_S = 1800
TOP_KERNELS = 12
BUSY_SHARE = 0.5  # below this CPU share the Markdown warns that other work inflated the times

# TVM's names for the layout operators the frontend emits (reshape, permute_dims, concat, take,
# broadcast_to, astype, strided_slice) once legalized, and their relatives.
LAYOUT_OPS = ("transpose", "permute_dims", "reshape", "concatenate", "split", "strided_slice",
              "take", "broadcast_to", "cast", "copy", "squeeze", "expand_dims", "flatten",
              "layout_transform")
TOKEN_SUM_OPS = ("sum",)  # Swin's integer token sum (IntegerGraph.sum_tokens)
VM_OVERHEAD = "VM overhead"
OTHER = "other"


def _words(*options: str) -> re.Pattern:
    """A name holds one of `options` as whole '_'-separated words (TVM appends numbers,
    FuseOps prefixes "fused_" and joins the fused functions' names with '_')."""
    alternatives = "|".join(re.escape(o) for o in options)
    return re.compile(rf"(?:^|_)(?:{alternatives})(?=\d|_|$)")


# (kind, names) in precedence order: a fused kernel belongs to the first kind it names.
KIND_NAMES = (
    ("dense GEMM", (names.DENSE,)),
    ("attention matmul", (names.BATCH_MATMUL,)),
    ("Shiftmax", (names.SHIFTMAX, names.SHIFTMAX_MASKED)),
    ("ShiftGELU", (names.SHIFTGELU,)),
    ("I-LayerNorm", (names.LAYERNORM,)),
    ("input quantize", (names.INPUT_QUANTIZE,)),
    ("requantize", (names.REQUANTIZE, names.REQUANTIZE_ADD)),
    ("token sum", TOKEN_SUM_OPS),
    ("layout/copies", LAYOUT_OPS),
)
KERNEL_KINDS = tuple(kind for kind, _ in KIND_NAMES)
_PATTERNS = tuple((kind, _words(*options)) for kind, options in KIND_NAMES)
_SHAPE_FUNC = re.compile(rf"{SHAPE_FUNC}\d*")


def classify(name: str, nested: bool = False) -> str:
    """The kind of one VM call: a kernel kind, VM_OVERHEAD (builtins, shape functions, nested
    VM functions such as main_int8) or OTHER (a kernel no rule knows)."""
    if nested or name.startswith("vm.builtin.") or _SHAPE_FUNC.fullmatch(name):
        return VM_OVERHEAD
    for kind, pattern in _PATTERNS:
        if pattern.search(name):
            return kind
    return OTHER


# ---- measuring -----------------------------------------------------------------------------------

def measure_artifact(artifact: str | os.PathLike, batch: int, repeat: int = DEFAULT_REPEAT,
                     warmup: int = DEFAULT_WARMUP, threads: int | None = None,
                     entry: str = "main", seed: int = 0) -> dict:
    """The raw timings of `artifact` at `batch` from a measuring process with the TVM runtime
    only (TVM_USE_RUNTIME_LIB=1) and TVM_NUM_THREADS=threads (default: this process's
    cores); see profile_worker.py for the returned fields."""
    from .machine import cores

    threads = threads or cores()
    with tempfile.TemporaryDirectory(prefix="ivit-profile-") as work:
        task = {"artifact": str(Path(artifact).resolve()), "batch": batch, "repeat": repeat,
                "warmup": warmup, "entry": entry, "seed": seed,
                "out": str(Path(work) / "result.json")}
        task_path = Path(work) / "task.json"
        task_path.write_text(json.dumps(task))
        env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "TVM_NUM_THREADS": str(threads),
               "OMP_NUM_THREADS": str(threads)}
        done = subprocess.run([sys.executable, "-m", "ivit_tvm.benchmarks.profile_worker",
                               str(task_path)], env=env, capture_output=True, text=True,
                              timeout=WORKER_TIMEOUT_S)
        if done.returncode != 0:
            lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
            raise RuntimeError(f"{artifact}: the measuring process failed (exit status "
                               f"{done.returncode}): {lines[-1] if lines else 'no message'}")
        raw = json.loads(Path(task["out"]).read_text())
    if raw["threads"] != threads:
        raise RuntimeError(f"the measuring process ran {raw['threads']} TVM threads, not the "
                           f"{threads} asked for")
    return raw


def summarize(raw: dict) -> dict:
    """Kinds, kernels and VM overhead of one batch from the worker's raw timings."""
    runs = len(raw["end_to_end_ms"])
    e2e = _stats(raw["end_to_end_ms"])
    kernels, kind_runs = [], defaultdict(lambda: [0.0] * runs)
    kind_calls: dict[str, int] = defaultdict(int)
    kind_names: dict[str, int] = defaultdict(int)
    vm = {"builtin_calls": 0, "shape_function_calls": 0, "functions": [],
          "instrumented_ms": 0.0}
    for name in raw["order"]:
        info = raw["calls"][name]
        kind = classify(name, info["nested"])
        if kind == VM_OVERHEAD:
            key = ("functions" if info["nested"] else
                   "builtin_calls" if name.startswith("vm.builtin.") else "shape_function_calls")
            if key == "functions":
                vm["functions"].append(name)
            else:
                vm[key] += info["calls"]
            vm["instrumented_ms"] += statistics.median(info["ms"])
            continue
        kernels.append({"name": name, "kind": kind, "calls": info["calls"],
                        "ms": statistics.median(info["ms"])})
        kind_calls[kind] += info["calls"]
        kind_names[kind] += 1
        for i, ms in enumerate(info["ms"]):
            kind_runs[kind][i] += ms
    kinds = [{"kind": kind, "ms": statistics.median(per_run), "best_ms": min(per_run),
              "calls": kind_calls[kind], "kernels": kind_names[kind]}
             for kind, per_run in kind_runs.items()]
    kernels_ms = sum(k["ms"] for k in kinds)
    overhead = {"kind": VM_OVERHEAD, "ms": e2e["median"] - kernels_ms,
                "best_ms": e2e["min"] - sum(k["best_ms"] for k in kinds),
                "calls": vm["builtin_calls"] + vm["shape_function_calls"], "kernels": 0}
    rows = sorted(kinds + [overhead], key=lambda k: -k["ms"])
    for row in rows:
        row["percent"] = 100.0 * row["ms"] / e2e["median"]
        row["ms_per_call"] = row["ms"] / row["calls"] if row["calls"] else None
    per_run = [{"end_to_end_ms": raw["end_to_end_ms"][i],
                "instrumented_ms": raw["instrumented_ms"][i],
                "kernels_ms": sum(per[i] for per in kind_runs.values())} for i in range(runs)]
    floor = [statistics.median(raw["calls"][n]["ms"]) / raw["calls"][n]["calls"] * 1e3
             for n in raw["order"] if n == "vm.builtin.null_value"]
    return {
        "batch": raw["batch"], "entry": raw["entry"], "threads": raw["threads"],
        "runtime_only": raw["runtime_only"], "repeat": runs,
        # CPU time the measuring process got over the repeats, per thread and wall second:
        # well below 1 on a machine busy with other work (times then inflated)
        "cpu_share": raw["cpu_seconds"] / (raw["wall_seconds"] * raw["threads"]),
        "end_to_end_ms": e2e, "per_image_ms": e2e["median"] / raw["batch"],
        "instrumented_ms": _stats(raw["instrumented_ms"]),
        "kernels_ms": kernels_ms, "vm_overhead_ms": overhead["ms"],
        "kernel_calls": sum(kind_calls.values()),
        "kinds": rows,
        "kernels": sorted(kernels, key=lambda k: -k["ms"]),
        "vm": vm,
        "instrument_floor_us": floor[0] if floor else None,
        "runs": per_run,
    }


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    quartiles = (statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1
                 else ordered * 3)
    return {"median": statistics.median(ordered), "p25": quartiles[0], "p75": quartiles[2],
            "min": ordered[0], "max": ordered[-1]}


# ---- OpenVINO beside it --------------------------------------------------------------------------

# OpenVINO CPU plugin layer types (a type or its prefix: FullyConnectedQuantizedLegacy) -> the
# nearest ivit-tvm kind. OpenVINO fuses differently: its FullyConnected carries requantization
# and often GELU as post-ops, and its Subgraph (snippets) kernels fuse elementwise chains.
OPENVINO_KINDS = (
    ("FullyConnected", "dense GEMM"), ("Convolution", "dense GEMM"),
    ("MatMul", "attention matmul"), ("ScaledDotProductAttention", "attention matmul"),
    ("Softmax", "Shiftmax"), ("SoftMax", "Shiftmax"),
    ("Gelu", "ShiftGELU"),
    ("MVN", "I-LayerNorm"), ("RMS", "I-LayerNorm"),
    ("FakeQuantize", "requantize"),
    ("Subgraph", "elementwise (OpenVINO-fused)"), ("Eltwise", "elementwise (OpenVINO-fused)"),
    ("Convert", "layout/copies"), ("Reorder", "layout/copies"), ("Transpose", "layout/copies"),
    ("Reshape", "layout/copies"), ("Concat", "layout/copies"), ("Gather", "layout/copies"),
    ("Split", "layout/copies"), ("StridedSlice", "layout/copies"),
    ("Broadcast", "layout/copies"), ("Input", "layout/copies"), ("Output", "layout/copies"),
)


def openvino_kind(layer_type: str) -> str:
    """The nearest ivit-tvm kind of an OpenVINO layer type (OTHER if none)."""
    return next((kind for prefix, kind in OPENVINO_KINDS if layer_type.startswith(prefix)),
                OTHER)


def openvino_skip_reason() -> str | None:
    """Why OpenVINO INT8 cannot run here (None when it can)."""
    try:
        from .engines import openvino as ov_engine
    except ImportError as err:
        return f"benchmarks/engines/openvino.py: {err}"
    return ov_engine.OV_INT8.skip_reason()


def openvino_ir(spec: str, folder: Path) -> str:
    """ivit-bench's `ov-int8` IR of the model spec, written into `folder`: the timm float model
    of the same architecture, exported to ONNX, NNCF PTQ in transformer mode."""
    from .engines.openvino import write_ir
    from .workload import make_workload, parse_model

    workload = make_workload(parse_model(spec), folder / "workload")
    return str(write_ir(workload, "int8"))


def openvino_beside(xml: str, spec: str, batch: int, threads: int) -> dict:
    """OpenVINO's own per-layer-type counters of the IR at `batch` (PERF_COUNT on)."""
    from .engines.openvino import profile_ir

    out = profile_ir(xml, batch, threads, "int8", label=spec).to_dict()
    total = out["end_to_end_ms"]
    out["layers"] = [{"type": kind, "ms": ms, "percent": 100.0 * ms / total,
                      "kind": openvino_kind(kind),
                      "exec_types": out["kernels"].get(kind, [])} for kind, ms in out["layers"]]
    out["overhead_ms"] = total - out["layers_ms"]
    out["status"] = "ok"
    return out


def _or_failure(work):
    """`work()`, or {"status": "failed", "reason"} when it raises: a broken OpenVINO run must
    not lose the ivit-tvm profile."""
    try:
        return work()
    except Exception as err:
        return {"status": "failed", "reason": f"{type(err).__name__}: "
                                              f"{' '.join(str(err).split())[:300]}"}


def model_spec(config: dict) -> str:
    """The ivit-bench model spec of an artifact's configuration: the short name with the
    fewest differing fields, plus those fields (e.g. "deit_tiny:img_size=32,depth=2")."""
    from ivit_tvm.models import model_config
    from ivit_tvm.models.config import ALIASES

    best = None
    for name in ALIASES:
        base = model_config(name).to_dict()
        if base.get("arch") != config.get("arch"):
            continue
        diff = [(k, config[k]) for k, v in base.items()  # in the configuration's field order
                if k in config and _plain(config[k]) != _plain(v)]
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    if best is None:
        raise ValueError(f"no model of architecture {config.get('arch')!r} to compare with")
    name, diff = best
    text = ",".join(f"{k}={'/'.join(map(str, v)) if isinstance(v, list | tuple) else v}"
                    for k, v in diff)
    return f"{name}:{text}" if text else name


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


# ---- the document and its outputs ----------------------------------------------------------------

def profile_artifact(artifact: str | os.PathLike, batches: list[int], repeat: int =
                     DEFAULT_REPEAT, warmup: int = DEFAULT_WARMUP, threads: int | None = None,
                     openvino: bool = True, ov_xml: str | None = None,
                     progress: bool = True) -> dict:
    """The profile document of `artifact` at each batch (see the module docstring)."""
    from tqdm import tqdm

    from ivit_tvm.artifact import read_manifest

    from .machine import cores, load_average, machine_info

    meta = read_manifest(artifact)
    threads = threads or cores()
    spec = model_spec(meta["config"])
    doc = {"schema": SCHEMA, "date": datetime.date.today().isoformat(),
           "started": datetime.datetime.now().isoformat(timespec="seconds"),
           "artifact": str(artifact), "model": spec, "config": meta["config"],
           "target": meta["target"], "machine": machine_info(),
           "settings": {"batches": batches, "repeat": repeat, "warmup": warmup,
                        "threads": threads, "entry": "main", "openvino": openvino},
           "batches": []}
    ov_skip = "--no-openvino" if not openvino else None if ov_xml else openvino_skip_reason()
    steps = len(batches) * (1 if ov_skip else 2) + (0 if ov_skip or ov_xml else 1)
    with tqdm(total=steps, desc="ivit-profile", unit="step", disable=not progress) as bar, \
            tempfile.TemporaryDirectory(prefix="ivit-profile-ov-") as work:
        if ov_skip is None and ov_xml is None:
            bar.set_postfix_str("OpenVINO INT8 model (NNCF)")
            ov_xml = _or_failure(lambda: openvino_ir(spec, Path(work)))
            bar.update(1)
        for batch in batches:
            bar.set_postfix_str(f"batch {batch}: ivit-tvm")
            result = summarize(measure_artifact(artifact, batch, repeat, warmup, threads))
            bar.update(1)
            if ov_skip:
                result["openvino"] = {"status": "skipped", "reason": ov_skip}
            elif isinstance(ov_xml, dict):
                result["openvino"] = ov_xml  # building the model failed
            else:
                bar.set_postfix_str(f"batch {batch}: OpenVINO")
                result["openvino"] = _or_failure(
                    lambda b=batch: openvino_beside(ov_xml, spec, b, threads))
                bar.update(1)
            doc["batches"].append(result)
    doc["machine"]["load_after"] = load_average()
    return doc


def profile_bench_artifacts(specs, batches: list[int], threads: int, work: Path,
                            folder: Path, warmup: int = DEFAULT_WARMUP,
                            repeat: int = DEFAULT_REPEAT) -> list[Path]:
    """`ivit-bench --profile`: profile the ivit-tvm artifact ivit-bench compiled for each
    model (in its work folder), beside the ov-int8 IR it wrote there if any; writes
    profile-MODEL.md and .json into `folder` and returns their paths."""
    from .run import model_folder_name  # run_benchmark's folder name for a model under `work`

    paths = []
    for spec in specs:
        models = work / model_folder_name(spec.text)
        artifact = models / "ivit_int8.ivit"
        if not artifact.is_dir():
            note(f"{spec.label}: no ivit-tvm artifact to profile (its prepare failed)")
            continue
        ov_xml = models / "ov_int8.xml"
        doc = profile_artifact(artifact, batches, repeat, warmup, threads,
                               ov_xml=str(ov_xml) if ov_xml.is_file() else None)
        doc["model"], doc["artifact"] = spec.text, f"ivit-bench's {spec.label} artifact"
        stem = f"profile-{models.name}"
        paths.append(write_atomic(folder / f"{stem}.json", to_json(doc)))
        paths.append(write_atomic(folder / f"{stem}.md", markdown(doc)))
    return paths


NOTES = (
    "Each kind: the median over repeats of its kernels' summed time per call of `main` (float "
    "images in, int32 logits out), measured by the Relax VM's instrument (TVM 0.27 has no VM "
    "profiler) in a process with the TVM runtime only; a fused kernel counts once, under its "
    "first kind in the order dense GEMM, attention matmul, Shiftmax, ShiftGELU, I-LayerNorm, "
    "input quantize, requantize, token sum, layout/copies (a GEMM with its requantize fused "
    "is a GEMM).",
    "VM overhead = median end-to-end (plain calls, alternating with the instrumented ones) "
    "minus the kinds' sum: the VM's own instructions, builtins (allocation, shapes, views) "
    "and shape functions. Each instrumented call also carries the instrument's own cost (see "
    "'instrument floor'), so kernels are slightly over- and the overhead under-counted.",
    "Best ms: the fastest repeat of each kind (and of the end to end); on a machine busy with "
    "other work the medians are inflated and the best repeats are the better estimate. CPU "
    "share: the CPU time the measuring process got over its repeats per thread and wall "
    "second (below 1 also where kernels leave threads idle; far below on a busy machine).",
    "OpenVINO: its own per-layer counters (PERF_COUNT) of `ov-int8` as ivit-bench deploys it "
    "(the timm float model of the same architecture, NNCF PTQ, transformer mode; LayerNorm, "
    "Softmax and GELU stay float), summed per layer type; its kind column is the nearest "
    "ivit-tvm kind (OpenVINO fuses requantization and often GELU into its FullyConnected).",
)


def markdown(doc: dict) -> str:
    machine, settings = doc["machine"], doc["settings"]
    lines = [f"# ivit-profile {doc['model']} {machine['slug']} {doc['date']}", "",
             f"{machine['cpu']}, {machine['cores']} cores, {settings['threads']} threads, "
             f"llvm -mcpu={doc['target'].get('mcpu', '?')}; "
             f"TVM {machine['versions'].get('apache-tvm')}; "
             f"{settings['repeat']} repeats after {settings['warmup']} warm-up calls; load "
             f"average before {machine['load_before'][0]}, after "
             f"{machine.get('load_after', ['?'])[0]}. Artifact: `{doc['artifact']}`.", ""]
    for result in doc["batches"]:
        lines += _batch_section(result)
    lines += ["## Notes", ""] + [f"- {n}" for n in NOTES] + [""]
    return "\n".join(lines)


def _batch_section(result: dict) -> list[str]:
    e2e = result["end_to_end_ms"]
    floor = result["instrument_floor_us"]
    lines = [f"## Batch {result['batch']}", "",
             f"End to end {e2e['median']:.2f} ms (IQR {e2e['p25']:.2f}-{e2e['p75']:.2f}, "
             f"{result['per_image_ms']:.2f} ms per image); kernels {result['kernels_ms']:.2f} ms "
             f"in {result['kernel_calls']} calls; VM overhead {result['vm_overhead_ms']:.2f} ms; "
             f"instrumented call {result['instrumented_ms']['median']:.2f} ms"
             + (f", instrument floor {floor:.1f} us per call" if floor else "")
             + f"; TVM runtime only: {'yes' if result['runtime_only'] else 'no'}; CPU share "
             f"{result['cpu_share']:.2f} of {result['threads']} threads.", "",
             *_busy_warning(result),
             "| kind | ms | % of end to end | calls per inference | ms per call | kernels | "
             "best ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for row in result["kinds"]:
        per_call = "—" if row["ms_per_call"] is None else f"{row['ms_per_call']:.3f}"
        lines.append(f"| {row['kind']} | {row['ms']:.2f} | {row['percent']:.1f} | "
                     f"{row['calls']} | {per_call} | {row['kernels'] or '—'} | "
                     f"{row['best_ms']:.2f} |")
    lines += [f"| **end to end** | **{e2e['median']:.2f}** | 100.0 | | | | "
              f"{e2e['min']:.2f} |", "",
              f"Slowest kernels (of {len(result['kernels'])}):", "",
              "| kernel | kind | calls | ms |", "|---|---|---:|---:|"]
    for kernel in result["kernels"][:TOP_KERNELS]:
        lines.append(f"| `{kernel['name']}` | {kernel['kind']} | {kernel['calls']} | "
                     f"{kernel['ms']:.3f} |")
    lines += [""] + _openvino_section(result)
    return lines


def _busy_warning(result: dict) -> list[str]:
    """A warning line when the measuring process got less than BUSY_SHARE of its threads."""
    if result["cpu_share"] >= BUSY_SHARE:
        return []
    return [f"**Busy machine:** the measuring process got {result['cpu_share']:.2f} of its "
            f"{result['threads']} threads' CPU time: other work inflated these times (the "
            "OpenVINO run below too). Compare shares and best repeats, not absolute times.", ""]


def _openvino_section(result: dict) -> list[str]:
    ov = result.get("openvino") or {}
    if ov.get("status") != "ok":
        return [f"OpenVINO INT8: {ov.get('status', 'skipped')} ({ov.get('reason', '')}).", ""]
    versions = ov.get("versions", {})
    lines = [f"OpenVINO INT8 ({versions.get('openvino')}, NNCF {versions.get('nncf')}), its "
             f"own counters: end to end {ov['end_to_end_ms']:.2f} ms (counters on), layers "
             f"{ov['layers_ms']:.2f} ms, the rest {ov['overhead_ms']:.2f} ms.", "",
             "| OpenVINO layer type | ms | % of its end to end | nearest ivit-tvm kind | "
             "its kernels |", "|---|---:|---:|---|---|"]
    for layer in ov["layers"]:
        lines.append(f"| {layer['type']} | {layer['ms']:.2f} | {layer['percent']:.1f} | "
                     f"{layer['kind']} | {', '.join(layer['exec_types'])} |")
    by_kind: dict[str, float] = defaultdict(float)
    for layer in ov["layers"]:
        by_kind[layer["kind"]] += layer["ms"]
    ours = {row["kind"]: row["ms"] for row in result["kinds"]}
    kinds = list(dict.fromkeys([*ours, *by_kind]))
    lines += ["", "Side by side (OpenVINO's layer types mapped to the nearest kind):", "",
              "| kind | ivit-tvm ms | OpenVINO INT8 ms |", "|---|---:|---:|"]
    for kind in kinds:
        theirs = by_kind.get(kind)
        lines.append(f"| {kind} | {ours[kind]:.2f} | "
                     f"{'—' if theirs is None else f'{theirs:.2f}'} |" if kind in ours else
                     f"| {kind} | — | {theirs:.2f} |")
    lines.append(f"| **end to end** | **{result['end_to_end_ms']['median']:.2f}** | "
                 f"**{ov['end_to_end_ms']:.2f}** |")
    return lines + [""]


def write_atomic(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(text)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def to_json(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


# ---- the command ---------------------------------------------------------------------------------

@click.command("ivit-profile", context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(file_okay=False, path_type=Path))
@click.option("-b", "--batch", "batches", multiple=True, type=click.IntRange(min=1),
              help="Batch size to profile (repeatable). [default: 1, or the artifact's fixed "
                   "batch]")
@click.option("--repeat", default=DEFAULT_REPEAT, show_default=True,
              type=click.IntRange(min=1),
              help="Timed repeats per batch: each is one plain call (end to end) and one "
                   "instrumented call (per-kernel times); the medians are reported.")
@click.option("--warmup", default=DEFAULT_WARMUP, show_default=True,
              type=click.IntRange(min=0), help="Untimed calls before the repeats.")
@click.option("--threads", type=click.IntRange(min=1),
              help="TVM_NUM_THREADS of the measuring process (and OpenVINO's threads). "
                   "[default: the cores this process may use]")
@click.option("--openvino/--no-openvino", default=True, show_default=True,
              help="Also run OpenVINO INT8 (ivit-bench's ov-int8) on the same architecture "
                   "with its per-layer counters on (skipped with a reason where OpenVINO is "
                   "not installed). It builds the float model, exports ONNX and quantizes it "
                   "with NNCF first: about a minute for DeiT-S.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the profile as JSON to this file (atomically).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the Markdown tables to this file too (atomically).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@reports_errors
def profile_cmd(artifact, batches, repeat, warmup, threads, openvino, json_path, md_path,
                quiet) -> None:
    """Time per kernel kind of ARTIFACT (from ivit-compile, llvm target): dense GEMMs,
    attention matmuls, Shiftmax, ShiftGELU, I-LayerNorm, requantize, layout/copies and the VM
    overhead (end to end minus the kernels), sorted by time with their share of the end-to-end
    latency and calls per inference (one batch), beside OpenVINO INT8's own per-layer
    counters. Prints Markdown tables; --json and --markdown save them.
    """
    from ivit_tvm.artifact import read_manifest

    meta = read_manifest(artifact)
    if meta["target"].get("kind") != "llvm":
        raise ValueError(f"{artifact}: compiled for {meta['target'].get('kind')}; ivit-profile "
                         "profiles llvm (CPU) artifacts")
    fixed = meta["input_shape"][0]
    if fixed != -1 and any(b != fixed for b in batches):
        raise ValueError(f"{artifact}: compiled for batch {fixed}; pass --batch {fixed} or "
                         "recompile with --batch dynamic")
    batch_list = sorted(set(batches)) or [1 if fixed == -1 else fixed]
    doc = profile_artifact(artifact, batch_list, repeat, warmup, threads, openvino,
                           progress=not quiet)
    text = markdown(doc)
    click.echo(text, nl=False)
    written = []
    if json_path:
        written.append(write_atomic(json_path, to_json(doc)))
    if md_path:
        written.append(write_atomic(md_path, text))
    if written:
        note(f"wrote {', '.join(map(str, written))}")
    unknown = sorted({k["name"] for r in doc["batches"] for k in r["kernels"]
                      if k["kind"] == OTHER})
    if unknown:
        note(f"kernels of no known kind (counted as '{OTHER}'): {', '.join(unknown)}")
