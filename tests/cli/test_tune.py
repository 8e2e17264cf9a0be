"""ivit-tune: one small GEMM of the digits model tuned through an RPC tracker and server on
loopback, its record in the database, and ivit-compile building it from the record bit-exact
against the integer reference; tasks, options and errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from ivit_tvm.schedules.tuning.database import open_database, target_key
from ivit_tvm.schedules.tuning.search import RPCSettings, check_tracker
from ivit_tvm.schedules.tuning.tasks import gemm_kind, select_tasks

import ivit_tvm
from ivit_tvm import data
from ivit_tvm.artifact import MANIFEST
from ivit_tvm.checkpoint import load_checkpoint
from ivit_tvm.cli.tune import model_tasks, tune_cmd
from ivit_tvm.compile import compile_checkpoint, make_target

CHECKPOINT = data.DIGITS_QAT  # DeiT, 65 tokens, embed 64: its attention projection is ~64^3
LLVM = make_target("llvm")
KEY = "ivit-test"
TRIALS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str]) -> subprocess.Popen:
    """A TVM RPC process in its own process group (it forks workers)."""
    return subprocess.Popen([sys.executable, "-m", *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_for_tracker(port: int, timeout_s: float = 300.0) -> None:
    """Until the tracker accepts connections on `port` (starting Python and TVM takes a
    while on a loaded machine)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"the RPC tracker did not listen on port {port}")


def wait_for_server(port: int, timeout_s: float = 300.0) -> None:
    """Until the tracker at `port` lists a server under KEY."""
    from tvm import rpc

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        summary = rpc.connect_tracker("127.0.0.1", port).summary()
        if KEY in str(summary.get("queue_info", {})) or KEY in str(summary.get("server_info")):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no RPC server registered with the tracker on port {port}")


@pytest.fixture(scope="module")
def tracker():
    """An RPC tracker and one RPC server registered under KEY, both on loopback."""
    port, server_port = free_port(), free_port()
    processes = [start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                        "--port-end", str(port + 1), "--silent"])]
    try:
        wait_for_tracker(port)
        processes.append(start([
            "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(server_port),
            "--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{port}", "--key", KEY,
            "--silent"]))
        wait_for_server(port)
        yield port
    finally:
        for process in reversed(processes):
            stop(process)


@pytest.fixture(scope="module")
def small_gemm():
    """The digits model's first dense task with 64 output channels and K = 64."""
    tasks = model_tasks(CHECKPOINT, LLVM, batch=1, kinds=("dense",))
    return next(t for t in tasks if gemm_kind(t.func)[1][1:] == [64, 64])


@pytest.fixture(scope="module")
def tuned(tracker, small_gemm, tmp_path_factory):
    """ivit-tune (its own process, as users run it) on that one GEMM, measured through the
    tracker: (completed process, database folder)."""
    folder = tmp_path_factory.mktemp("tuned") / "db"
    env = dict(os.environ, TVM_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "ivit_tvm.cli.tune", str(CHECKPOINT), "--target", "llvm",
         "--batch", "1", "--trials", str(TRIALS), "--search", "random", "--only",
         small_gemm.name, "--rpc-tracker", f"127.0.0.1:{tracker}", "--rpc-key", KEY,
         "--database", str(folder), "--keep-slower", "--quiet"],
        capture_output=True, text=True, env=env, timeout=900)
    return result, folder


def test_tune_through_rpc_tracker_records_the_gemm(tuned, small_gemm):
    result, folder = tuned
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracker 127.0.0.1" in result.stdout
    row = next(line.split() for line in result.stdout.splitlines()
               if line.startswith(small_gemm.name + " "))
    hand_us, tuned_us, kept = float(row[-3]), float(row[-2]), row[-1]  # measured both ways
    assert hand_us > 0 and tuned_us > 0 and kept == "yes"
    database = open_database(folder)
    assert database.has_workload(small_gemm.workload)
    records = database.get_all_tuning_records()
    assert len(records) == 1  # the best of the trials, one workload
    run_secs = [float(s) for s in records[0].run_secs]
    assert run_secs and all(0 < s < 1 for s in run_secs)


def test_compile_with_the_record_is_bit_exact(tuned, small_gemm, tmp_path):
    _, folder = tuned
    out = tmp_path / "digits.ivit"
    report = compile_checkpoint(CHECKPOINT, "llvm", out, batch=1, progress=False,
                                tuning_db=folder)
    assert report.tuned_kernels == sorted(small_gemm.primfuncs)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tuned_kernels"] == sorted(small_gemm.primfuncs)
    model, _ = load_checkpoint(CHECKPOINT)
    compiled = ivit_tvm.load(out)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):  # batch 1: the tuned shape
        x = torch.randn(1, 3, 32, 32, generator=gen) * 2
        q_logits, _ = compiled.run_int(x.numpy())
        np.testing.assert_array_equal(q_logits, model.forward_integer(x)[0].numpy())


def test_dynamic_batch_compile_uses_no_record(tuned, tmp_path):
    _, folder = tuned
    report = compile_checkpoint(CHECKPOINT, "llvm", tmp_path / "dyn.ivit", progress=False,
                                tuning_db=folder)
    assert report.tuned_kernels == []  # a symbolic batch has no fixed shape to look up


def test_tasks_are_the_gemms_with_their_layers(small_gemm):
    tasks = model_tasks(CHECKPOINT, LLVM, batch=1)
    kinds = {t.kind for t in tasks}
    assert kinds == {"dense", "matmul"}
    assert small_gemm.name in [t.name for t in tasks]
    assert len({t.name for t in tasks}) == len(tasks)
    assert sum(t.weight for t in tasks) == len({n for t in tasks for n in t.primfuncs})


def test_select_tasks_exact_name_then_substring(small_gemm):
    tasks = model_tasks(CHECKPOINT, LLVM, batch=1, kinds=("dense",))
    assert [t.name for t in select_tasks(tasks, (small_gemm.name,))] == [small_gemm.name]
    assert {t.kind for t in select_tasks(tasks, ("dense",))} == {"dense"}
    with pytest.raises(ValueError, match="matches no kernel; the kernels are: dense"):
        select_tasks(tasks, ("conv",))


def test_rpc_settings_parse():
    assert RPCSettings.parse("10.0.0.5:9190", "znver4") == RPCSettings("10.0.0.5", 9190, "znver4")
    with pytest.raises(ValueError, match="HOST:PORT"):
        RPCSettings.parse("10.0.0.5", "k")
    with pytest.raises(ValueError, match="--rpc-key is empty"):
        RPCSettings.parse("h:9190", "")


def test_tracker_without_a_server_under_the_key_is_refused(tracker):
    with pytest.raises(ValueError, match="has no server under the key 'other'.*keys: ivit-test"):
        check_tracker(RPCSettings("127.0.0.1", tracker, "other"))
    assert check_tracker(RPCSettings("127.0.0.1", tracker, KEY)) == 1
    with pytest.raises(OSError, match="cannot be reached"):
        check_tracker(RPCSettings("127.0.0.1", free_port(), KEY))


def test_rpc_options_go_together():
    result = CliRunner().invoke(tune_cmd, [str(CHECKPOINT), "--target", "llvm",
                                           "--rpc-tracker", "127.0.0.1:9190"])
    assert result.exit_code == 1
    assert "ivit-tune: error: --rpc-tracker and --rpc-key go together" in result.output


def test_list_prints_kernels_and_tunes_nothing(tmp_path):
    result = CliRunner().invoke(tune_cmd, [str(CHECKPOINT), "--target", "llvm", "--list",
                                           "--kind", "matmul", "--database", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines and all(line.startswith("matmul ") for line in lines)
    assert not (tmp_path / "x").exists()


def test_database_folder_errors_and_target_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tuning database here"):
        open_database(tmp_path)
    assert target_key(make_target("llvm", mcpu="x86-64").target) == "llvm-x86-64"
    with pytest.raises(FileNotFoundError, match="no tuning database"):
        compile_checkpoint(CHECKPOINT, "llvm", tmp_path / "o.ivit", batch=1, progress=False,
                           tuning_db=Path(tmp_path))


def test_tuning_processes_skip_the_intrinsic_library_and_fix_vnni():
    """In a fresh process (the stand-in changes sys.modules): TVM's name dot_16x4_vnni holds
    the project's vpdpbusd, and no GPU intrinsic was built."""
    code = (
        "import sys, tvm_ffi\n"
        "from ivit_tvm.schedules.tuning.intrinsics import skip_intrinsic_library\n"
        "from ivit_tvm.schedules.cpu import vnni\n"
        "from tvm.s_tir import TensorIntrin\n"
        "skip_intrinsic_library()\n"
        "import tvm.s_tir.tensor_intrin\n"
        "impl = TensorIntrin.get('dot_16x4_vnni').impl\n"
        "ours = vnni._INTRINSICS[vnni.VNNI_INTRIN][1]\n"
        "print(tvm_ffi.structural_equal(impl, ours),\n"
        "      'tvm.s_tir.tensor_intrin.cuda' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "False"]
