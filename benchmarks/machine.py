"""What machine a benchmark ran on: a short slug for folder names and the facts for reports."""

from __future__ import annotations

import os
import platform
import re

NOISE = {"processor", "cpu", "core", "with", "radeon", "graphics", "(r)", "(tm)"}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (else platform.processor())."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_slug() -> str:
    """e.g. "linux-x86_64-amd-epyc-2c": OS, architecture, CPU in at most 4 words, cores."""
    words = [w for w in re.split(r"[\s@]+", cpu_model().lower())
             if w and w not in NOISE and not re.fullmatch(r"[\d.]+ghz", w)][:4]
    cpu = re.sub(r"[^a-z0-9]+", "-", "-".join(words)).strip("-") or "cpu"
    return f"{platform.system().lower()}-{platform.machine().lower()}-{cpu}-{cores()}c"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews timings)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info() -> dict:
    from importlib import metadata

    versions = {}
    for package in ("apache-tvm", "torch", "timm", "onnx", "onnxruntime", "tensorrt", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"slug": machine_slug(), "cpu": cpu_model(), "cores": cores(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_before": load_average(), "versions": versions}
