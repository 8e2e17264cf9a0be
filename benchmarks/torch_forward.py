"""Per-image cost of the PyTorch forwards: timm float, fake-quant (what calibration and QAT
run) and the integer reference (what ivit-eval checks artifacts against), interleaved.

    python -m ivit_tvm.benchmarks.torch_forward --model deit_small --batch 8 --rounds 5
    python -m ivit_tvm.benchmarks.torch_forward --train     # also a QAT step vs a float step

Every forward is warmed up once, then timed in alternating rounds (ABC, CBA, ABC, ...) so
that drift in the machine's speed hits all of them alike; the ratios to the float forward
are taken per round and reported as median and spread (min-max). The models are a randomly
initialised timm model and the quantized model calibrated on random images (latency does not
depend on the weights). All forwards run under torch.inference_mode except --train's steps
(forward + backward, as a QAT step). Prints a table and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ivit_tvm.benchmarks.machine import cpu_model

from ivit_tvm.evaluate import build_fp_model
from ivit_tvm.models import model_config
from ivit_tvm.ptq import random_calibrated

FLOAT = "float"


def forwards(model_name: str, batch: int, train: bool, seed: int = 0):
    """{name: callable running one batch} and the batch's images."""
    config = model_config(model_name)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, config.in_chans, config.img_size, config.img_size,
                         generator=generator)  # (B, C, H, W) float32
    torch.manual_seed(seed)
    fp = build_fp_model(config)
    quantized = random_calibrated(config, batches=1, batch_size=2, seed=seed)

    def inference(fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            with torch.inference_mode():
                return fn()
        return run

    runs = {
        FLOAT: inference(lambda: fp(images)),
        "fake-quant": inference(lambda: quantized(images)),
        "integer reference": inference(lambda: quantized.forward_integer(images)),
    }
    if train:
        def step(model):
            def run():
                model.zero_grad(set_to_none=True)
                model(images).float().logsumexp(1).sum().backward()
            return run
        runs["float train step"] = step(fp)
        runs["QAT train step"] = step(quantized)
    return runs


def measure(runs: dict[str, Callable[[], object]], rounds: int, batch: int,
            log=print) -> dict[str, list[float]]:
    """Milliseconds per image of each run, one value per round, in alternating order."""
    for name, run in runs.items():
        start = time.perf_counter()
        run()
        log(f"warm-up {name}: {(time.perf_counter() - start) * 1e3 / batch:.0f} ms/image")
    names = list(runs)
    times = {name: [] for name in names}
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - start) * 1e3 / batch)
        log(f"round {index + 1}/{rounds}: " + ", ".join(
            f"{name} {times[name][-1]:.0f}" for name in names) + " ms/image")
    return times


def ratios(times: dict[str, list[float]], base: str) -> dict[str, dict[str, float]]:
    """Per-round ratio to `base` (same round), median, min and max; a train step's to the
    float train step."""
    out = {}
    for name, values in times.items():
        if name == base or name == "float train step":
            continue
        denominator = times["float train step" if name == "QAT train step" else base]
        per_round = [v / b for v, b in zip(values, denominator, strict=True)]
        out[name] = {"median": statistics.median(per_round), "min": min(per_round),
                     "max": max(per_round)}
    return out


def write_json(path: Path, data: dict) -> None:
    """Write atomically: a temporary file in the same folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="deit_small",
                        help="model name (short or timm), default deit_small")
    parser.add_argument("--batch", type=int, default=8, help="images per forward (default 8)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="timed rounds, alternating the order (default 5)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch.set_num_threads for every forward (default 2)")
    parser.add_argument("--train", action="store_true",
                        help="also time a QAT step (fake-quant forward + backward) against a "
                             "float training step")
    parser.add_argument("--json", type=Path, default=None,
                        help="write the results here (default: print only)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--batch, --rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    runs = forwards(args.model, args.batch, args.train)
    times = measure(runs, args.rounds, args.batch)
    result = {
        "model": args.model, "batch": args.batch, "threads": args.threads,
        "rounds": args.rounds, "cpu": cpu_model(), "torch": torch.__version__,
        "ms_per_image": {name: {"median": statistics.median(v), "min": min(v), "all": v}
                         for name, v in times.items()},
        "ratio_to_float": ratios(times, FLOAT),
    }
    print(f"\n{args.model}, batch {args.batch}, {args.threads} threads, {result['cpu']}")
    print(f"{'forward':<22}{'ms/image (median)':>19}{'x float (median, range)':>28}")
    for name, stats in result["ms_per_image"].items():
        ratio = result["ratio_to_float"].get(name)
        spread = (f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})"
                  if ratio else "")
        print(f"{name:<22}{stats['median']:>19.1f}{spread:>28}")
    if args.json is not None:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
