"""Prepare .gpu_carry/ here (no GPU needed) for benchmarks/gpu/run.sh on the GPU machine.

    .venv/bin/python -m ivit_tvm.benchmarks.gpu.prepare [--arch sm_90] [--models ...]

Writes, into .gpu_carry/ (ignored by git through its own .gitignore):
- tvm_runtime.tar.gz: the TVM runtime for Python 3.12 (libtvm_runtime, its CUDA library,
  tvm-ffi, the Python sources; no compiler), cut from the PyPI wheels, plus libcudart.so.13;
- <model>.so: CUDA artifacts (kernels compiled to SASS + PTX for --arch, weights inside);
- <model>_ref.npz: PyTorch's integer logits (forward_integer) per batch; the images come from
  a seed on both machines (inputs.seeded_images), so batch 32 costs no carried bytes;
- gemms.so: the four DeiT-S GEMMs (dense + bias + requantize, as fused in the model) at
  M = batch x 197 tokens, for the GEMM-vs-cuBLASLt comparison;
- manifest.json: what is there, for check.py and bench.py.
Models: reduced DeiT and Swin (correctness at batch 1, 3, 32), DeiT-S (correctness at 1, 3, 32,
timing) and Swin-T (correctness at 1, 3, timing).

The device tool carries at most 64 MiB, and DeiT-S (26 MiB) and Swin-T (33 MiB) with their
weights inside do not fit together with the rest (73 MiB): the default carry holds everything
but Swin-T (39 MiB); `--models swin_tiny --no-gemms` prepares a second carry for a second
call (README.md). A carry over the limit is refused (exit status 1).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np

from .inputs import image_seed, seeded_images, seeded_int8

REPO = Path(__file__).resolve().parents[2]
CARRY = REPO / ".gpu_carry"
WHEEL_CACHE = Path.home() / ".cache" / "ivit-tvm" / "wheels"  # downloads, outside the carry
WHEELS = {"apache-tvm": "0.27.0.post1", "apache-tvm-ffi": "0.1.14.post0"}
RUNTIME_LIBS = ("libtvm_runtime.so", "libtvm_runtime_cuda.so", "libtvm_runtime_extra.so")
SKIP_PREFIXES = ("tvm/3rdparty/", "tvm/src/", "tvm/include/", "tvm/web/", "tvm_ffi/3rdparty/",
                 "tvm_ffi/include/", "tvm_ffi/src/", "tvm_ffi/cython/")
CARRY_LIMIT_MIB = 64  # what the device tool carries to the GPU machine, at most
SECOND_CARRY = ("swin_tiny",)  # left out of the default carry: over the limit with DeiT-S

# name -> (model_config name, overrides, batches with references)
MODELS = {
    "deit_reduced": ("deit_tiny", dict(img_size=32, patch_size=8, depth=2, num_classes=10),
                     (1, 3, 32)),
    "swin_reduced": ("swin_tiny", dict(img_size=32, depths=(2, 2), num_heads=(3, 6),
                                       embed_dim=48, window_size=4, num_classes=10), (1, 3, 32)),
    "deit_small": ("deit_small", {}, (1, 3, 32)),
    "swin_tiny": ("swin_tiny", {}, (1, 3)),
    # a fixed-batch artifact: its inference runs as one CUDA graph (build.LOWERING_CONFIG)
    "deit_reduced_b3": ("deit_tiny", dict(img_size=32, patch_size=8, depth=2, num_classes=10),
                        (3,)),
}
FIXED_BATCH = {"deit_reduced_b3": 3}  # name -> the artifact's batch (others: any batch)
# DeiT-S's GEMMs: name -> (K, N); M = batch x 197 tokens
DEIT_S_GEMMS = {"qkv": (384, 1152), "proj": (384, 384), "fc1": (384, 1536), "fc2": (1536, 384)}
GEMM_BATCH = 32
DEIT_TOKENS = 197


def log(message: str) -> None:
    print(f"[prepare {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the TVM runtime for the GPU machine ------------------------------------------------
def download_wheels() -> list[Path]:
    """The two wheels for CPython 3.12 manylinux x86-64 (pip download, cached)."""
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    found = []
    for name, version in WHEELS.items():
        stem = name.replace("-", "_") + f"-{version}-"
        wheels = sorted(WHEEL_CACHE.glob(f"{stem}*.whl"))
        if not wheels:
            log(f"pip download {name}=={version} (py3.12, manylinux_2_28_x86_64)")
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                 "--python-version", "3.12", "--platform", "manylinux_2_28_x86_64",
                 "-d", str(WHEEL_CACHE), f"{name}=={version}"],
                check=True,
            )
            wheels = sorted(WHEEL_CACHE.glob(f"{stem}*.whl"))
        found.append(wheels[-1])
    return found


def keep_member(name: str) -> bool:
    """Whether a wheel member belongs in the runtime-only install."""
    if name.startswith(SKIP_PREFIXES):
        return False
    if name.startswith("tvm/lib/"):
        return Path(name).name in RUNTIME_LIBS
    return True


def cuda_runtime_library() -> Path | None:
    """libcudart.so.13 from this venv's nvidia-cuda-runtime (TVM's CUDA library needs it)."""
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    for root in spec.submodule_search_locations if spec else []:
        for candidate in Path(root).glob("cu*/lib/libcudart.so.13"):
            return candidate
    return None


def write_runtime_tarball(path: Path) -> dict:
    members = 0
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        for wheel in download_wheels():
            with zipfile.ZipFile(wheel) as archive:
                for info in archive.infolist():
                    if info.is_dir() or not keep_member(info.filename):
                        continue
                    data = archive.read(info)
                    entry = tarfile.TarInfo(info.filename)
                    entry.size = len(data)
                    entry.mode = 0o755 if info.filename.endswith(".so") else 0o644
                    tar.addfile(entry, io.BytesIO(data))
                    members += 1
        cudart = cuda_runtime_library()
        if cudart is not None:
            tar.add(cudart, arcname="tvm/lib/libcudart.so.13")
    return {"file": path.name, "members": members, "bytes": path.stat().st_size,
            "cudart": cudart is not None}


# ---- models, artifacts, references ------------------------------------------------------
def references(name: str, model, batches) -> dict[str, np.ndarray]:
    """PyTorch's integer logits per batch size, on the seeded images (inputs.py)."""
    import torch

    cfg = model.config
    arrays = {}
    with torch.no_grad():
        for batch in batches:
            shape = (batch, cfg.in_chans, cfg.img_size, cfg.img_size)
            images = torch.from_numpy(seeded_images(image_seed(name, batch), shape))
            logits = model.forward_integer(images)[0]  # (B, classes)
            arrays[f"logits_b{batch}"] = logits.numpy().astype(np.int32)
    return arrays


def prepare_model(name: str, arch: str, out: Path) -> dict:
    from ivit_tvm.schedules.backend import make_target
    from ivit_tvm.schedules.cuda.export import export_cuda_library

    from ivit_tvm.compile import apply_graph_passes, lower_model
    from ivit_tvm.models import model_config
    from ivit_tvm.ptq import random_calibrated

    model_name, overrides, batches = MODELS[name]
    started = time.time()
    model = random_calibrated(model_config(model_name, **overrides))
    log(f"{name}: model ready ({time.time() - started:.0f} s)")
    cuda = make_target("cuda", arch=arch)
    result = apply_graph_passes(lower_model(model, cuda, batch=FIXED_BATCH.get(name)))
    refs = references(name, model, batches)
    np.savez(out / f"{name}_ref.npz", **refs)
    log(f"{name}: references for batches {list(batches)} ({time.time() - started:.0f} s)")
    build_started = time.time()
    info = export_cuda_library(result.mod, cuda.target, out / f"{name}.so")
    build_s = time.time() - build_started
    log(f"{name}: {info.path.name} {info.size_bytes / 2**20:.1f} MiB, built in {build_s:.0f} s")
    return {
        "name": name, "status": "ok", "file": info.path.name, "reference": f"{name}_ref.npz",
        "arch": arch, "batches": list(batches), "bytes": info.size_bytes,
        "modules": info.device_modules, "driver": info.driver, "build_s": round(build_s, 1),
        "config": model.config.to_dict(), "input_shape": list(result.input_shape),
    }


def gemm_module(batch: int = GEMM_BATCH):
    """A Relax module with one function per DeiT-S GEMM: (M, K) int8 -> (M, N) int8, where
    M = batch x 197, the weights (N, K) int8 and bias (N,) int32 constants, and the requantize
    fused after it as in the model. Returns (module, {name: (M, K, N)})."""
    from tvm import relax

    from ivit_tvm import ops

    bb = relax.BlockBuilder()
    shapes = {}
    m = batch * DEIT_TOKENS
    for index, (name, (k, n)) in enumerate(DEIT_S_GEMMS.items()):
        weight_q = seeded_int8(100 + index, (n, k))  # (N, K) int8
        bias_q = seeded_int8(200 + index, (n,)).astype(np.int32) * 64  # (N,) int32
        x = relax.Var("q_x", relax.TensorType((m, k), "int8"))
        with bb.function(f"gemm_{name}", [x]):
            with bb.dataflow():
                acc = bb.emit_te(ops.integer_dense, x, relax.const(weight_q),
                                 relax.const(bias_q), primfunc_name_hint=f"dense_{name}")
                out = bb.emit_te(ops.requantize, acc, multiplier=1 << 14, shift=22, bits=8,
                                 primfunc_name_hint=f"requantize_{name}")
                result = bb.emit_output(out)
            bb.emit_func_output(result)
        shapes[name] = (m, k, n)
    return bb.get(), shapes


def prepare_gemms(arch: str, out: Path) -> dict:
    from ivit_tvm.schedules.cuda.export import export_cuda_library
    from ivit_tvm.schedules.targets import cuda_target

    started = time.time()
    mod, shapes = gemm_module()
    info = export_cuda_library(mod, cuda_target(arch), out / "gemms.so")
    log(f"gemms: {info.path.name} {info.size_bytes / 2**20:.1f} MiB "
        f"({time.time() - started:.0f} s)")
    return {"name": "gemms", "status": "ok", "file": info.path.name, "arch": arch,
            "shapes": {name: list(shape) for name, shape in shapes.items()},
            "input_seed": 7, "bytes": info.size_bytes}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sm_90", help='GPU arch, "sm_90" for the H200')
    parser.add_argument(
        "--models", nargs="*", choices=list(MODELS),
        default=[name for name in MODELS if name not in SECOND_CARRY],
        help=f"models to prepare (default: all but {', '.join(SECOND_CARRY)}, which goes in a "
             f"second carry: the {CARRY_LIMIT_MIB} MiB limit)")
    parser.add_argument("--no-gemms", dest="gemms", action="store_false",
                        help="skip the DeiT-S GEMM library (gemms.so)")
    args = parser.parse_args(argv)

    if CARRY.exists():
        shutil.rmtree(CARRY)
    CARRY.mkdir()
    (CARRY / ".gitignore").write_text("*\n")  # ignored, so the device tool carries it only
    manifest = {"arch": args.arch, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "commit": _git_commit(), "models": {}}
    log("TVM runtime tarball")
    manifest["runtime"] = write_runtime_tarball(CARRY / "tvm_runtime.tar.gz")
    log(f"runtime: {manifest['runtime']['bytes'] / 2**20:.1f} MiB")
    for name in args.models:
        try:
            manifest["models"][name] = prepare_model(name, args.arch, CARRY)
        except Exception as error:  # one model's failure leaves the others
            log(f"{name}: NOT PREPARED: {type(error).__name__}: {error}")
            manifest["models"][name] = {"name": name, "status": "not prepared",
                                        "error": f"{type(error).__name__}: {error}"[:2000]}
    if args.gemms:
        try:
            manifest["gemms"] = prepare_gemms(args.arch, CARRY)
        except Exception as error:
            log(f"gemms: NOT PREPARED: {type(error).__name__}: {error}")
            manifest["gemms"] = {"name": "gemms", "status": "not prepared",
                                 "error": f"{type(error).__name__}: {error}"[:2000]}
    for name in MODELS:
        if name not in args.models:
            manifest["models"][name] = {
                "name": name, "status": "not carried",
                "error": f"not in this carry (prepare --models {name}, a second device call)"}
    (CARRY / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = sum(f.stat().st_size for f in CARRY.iterdir() if f.is_file())
    log(f".gpu_carry: {total / 2**20:.1f} MiB in {len(list(CARRY.iterdir()))} files")
    if total > CARRY_LIMIT_MIB * 2**20:
        log(f"ERROR: over the {CARRY_LIMIT_MIB} MiB the device tool carries: prepare fewer "
            f"models per carry (--models ...)")
        return 1
    return 0


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
