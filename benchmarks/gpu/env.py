"""GPU machine: record the environment (GPU, driver, Python, torch, carried files) as JSON.

    python3 -m benchmarks.gpu.env --out $OUT/env.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from .tvm_runtime import CARRY


def nvidia_smi(query: str) -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"unavailable: {error}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    env = {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "gpu": nvidia_smi("name,memory.total,compute_cap"),
        "driver": nvidia_smi("driver_version"),
        "clocks": nvidia_smi("clocks.sm,clocks.max.sm,clocks.mem"),
        "carry": {f.name: f.stat().st_size for f in sorted(CARRY.iterdir()) if f.is_file()}
        if CARRY.is_dir() else "missing",
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
    except ImportError as error:
        env["torch"] = f"unavailable: {error}"
    manifest = CARRY / "manifest.json"
    if manifest.is_file():
        data = json.loads(manifest.read_text())
        env["prepared"] = {"created": data.get("created"), "commit": data.get("commit"),
                           "arch": data.get("arch")}
    args.out.write_text(json.dumps(env, indent=2))
    print(json.dumps(env, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
