"""ivit-compile's output folder: --force replaces only an artifact, never the current folder;
the final rename claims the output (a concurrent compile's loser says so); temporary work
lives in one folder next to the output, removed on every exit path (errors, Ctrl-C, SIGTERM)
and after a kill -9 by the next compile; the artifact follows the umask; llvm builds are
byte-reproducible (dynamic batch too). Each case lists the output's parent before and after."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from ivit_tvm.schedules.backend import get_backend
from support import DEIT, quantized

import ivit_tvm.compile as compile_module
from ivit_tvm.artifact import LIBRARY, MANIFEST, WORK_MARK
from ivit_tvm.checkpoint import save_checkpoint
from ivit_tvm.cli.compile import compile_cmd
from ivit_tvm.compile import compile_model, make_target

LLVM = make_target("llvm")
IVIT_COMPILE = str(Path(sys.executable).with_name("ivit-compile"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(quantized(DEIT), tmp_path_factory.mktemp("ckpt") / "deit.pth")


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def compile_cli(checkpoint: Path, out: Path | str, *extra: str):
    return CliRunner().invoke(compile_cmd, [str(checkpoint), "--target", "llvm", "-o", str(out),
                                            "--quiet", *extra])


def with_export(monkeypatch, export) -> None:
    """Compile with the llvm backend whose export is `export(real_export, built, info, path)`."""
    llvm = get_backend("llvm")
    patched = dataclasses.replace(
        llvm, export=lambda built, info, path: export(llvm.export, built, info, path))
    monkeypatch.setattr(compile_module, "get_backend", lambda kind: patched)


def test_force_refuses_a_folder_that_is_no_artifact(checkpoint, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_text("mine")
    before = listing(tmp_path)
    result = compile_cli(checkpoint, out, "--force")
    assert result.exit_code == 1
    assert f"{out} exists and is not an ivit-tvm artifact" in result.output
    assert "move it away or choose another -o path" in result.output
    assert listing(tmp_path) == before and (out / "holiday.jpg").read_text() == "mine"


def test_force_refuses_a_regular_file(checkpoint, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("mine")
    before = listing(tmp_path)
    result = compile_cli(checkpoint, out, "--force")
    assert result.exit_code == 1 and f"{out} exists and is not an ivit-tvm artifact" in \
        result.output
    assert listing(tmp_path) == before and out.read_text() == "mine"  # no .notes.txt.old


@pytest.mark.parametrize("out", [".", ".."])
def test_output_cannot_be_the_current_folder_or_above(checkpoint, tmp_path, monkeypatch, out):
    here = tmp_path / "work"
    here.mkdir()
    (here / "mine.txt").write_text("mine")
    monkeypatch.chdir(here)
    before = listing(tmp_path), listing(here)
    start = time.perf_counter()
    result = compile_cli(checkpoint, out, "--force")
    assert result.exit_code == 1
    assert f"{out}: the output cannot be the current folder or a folder above it" in \
        result.output and "give a new folder name with -o" in result.output
    assert time.perf_counter() - start < 5, "refused only after compiling"
    assert (listing(tmp_path), listing(here)) == before


def test_force_replaces_an_artifact(checkpoint, tmp_path):
    out = tmp_path / "deit.ivit"
    assert compile_cli(checkpoint, out).exit_code == 0
    old_inode = out.stat().st_ino
    result = compile_cli(checkpoint, out, "--force")
    assert result.exit_code == 0, result.output
    assert out.stat().st_ino != old_inode and (out / LIBRARY).is_file()
    assert listing(tmp_path) == ["deit.ivit"]


def test_the_rename_claims_the_output_and_the_loser_writes_nothing(checkpoint, tmp_path,
                                                                   monkeypatch):
    """Another compile claims -o while this one builds: the rename fails, this one says so."""
    out = tmp_path / "deit.ivit"

    def export_then_lose(export, built, info, path):
        sentence = export(built, info, path)
        shutil.copytree(path.parent, out)  # the other compile's artifact
        (out / "winner").write_text("")
        return sentence

    with_export(monkeypatch, export_then_lose)
    result = compile_cli(checkpoint, out)
    assert result.exit_code == 1
    assert f"{out} was written by another process during this compile; this one wrote " \
           "nothing" in result.output
    assert (out / "winner").exists() and listing(tmp_path) == ["deit.ivit"]


def test_forced_compile_does_not_replace_a_newer_artifact(checkpoint, tmp_path, monkeypatch):
    """--force agreed to replace the artifact there at the start, not one written since."""
    out = tmp_path / "deit.ivit"
    assert compile_cli(checkpoint, out).exit_code == 0

    def export_while_replaced(export, built, info, path):
        sentence = export(built, info, path)
        newer = tmp_path / "newer"
        shutil.copytree(out, newer)
        (newer / "winner").write_text("")
        shutil.rmtree(out)
        os.rename(newer, out)
        return sentence

    with_export(monkeypatch, export_while_replaced)
    result = compile_cli(checkpoint, out, "--force")
    assert result.exit_code == 1 and f"{out} was written by another process" in result.output
    assert (out / "winner").exists() and listing(tmp_path) == ["deit.ivit"]


def test_two_compiles_at_once_one_wins(checkpoint, tmp_path):
    out = tmp_path / "deit.ivit"
    runs = [subprocess.Popen([IVIT_COMPILE, str(checkpoint), "--target", "llvm", "-o", str(out),
                              "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, _, err in results if code == 1)
    assert loser.strip().count("\n") == 0 and str(out) in loser
    assert listing(tmp_path) == ["deit.ivit"] and (out / MANIFEST).is_file()


@pytest.mark.parametrize(("signum", "code", "said"), [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
    ids=["sigterm", "ctrl-c"])
def test_signal_mid_compile_cleans_up_and_says_one_line(checkpoint, tmp_path, signum, code, said):
    out = tmp_path / "deit.ivit"
    run = subprocess.Popen([IVIT_COMPILE, str(checkpoint), "--target", "llvm", "-o", str(out),
                            "--quiet"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(f".*{WORK_MARK}*")) and time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        time.sleep(0.01)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == code, err
    assert err.strip() == f"ivit-compile: {said}"
    assert listing(tmp_path) == []


def test_ctrl_c_turned_into_a_runtime_error_by_tvm_reads_as_interrupted(checkpoint, tmp_path,
                                                                        monkeypatch):
    """TVM turns the KeyboardInterrupt raised inside one of its calls into a RuntimeError."""
    def interrupted_in_ffi(export, built, info, path):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        except BaseException:
            raise RuntimeError("TVM: an error happened in a callback") from None

    with_export(monkeypatch, interrupted_in_ffi)
    result = compile_cli(checkpoint, tmp_path / "deit.ivit")
    assert result.exit_code == 130, result.output
    assert result.output.strip() == "ivit-compile: interrupted"
    assert listing(tmp_path) == []


def test_next_compile_removes_what_a_killed_one_left(checkpoint, tmp_path, monkeypatch):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".old.ivit{WORK_MARK}{dead.pid}-abcd1234"
    (stale / "tmp" / "tmpxyz").mkdir(parents=True)
    (stale / "tmp" / "tmpxyz" / "lib0.o").write_bytes(b"\0")
    alive = tmp_path / f".other.ivit{WORK_MARK}{os.getppid()}-abcd1234"  # a running compile
    alive.mkdir()
    seen = {}

    def export_recording_temp(export, built, info, path):
        sentence = export(built, info, path)
        seen["tempdir"], seen["TMPDIR"] = tempfile.gettempdir(), os.environ["TMPDIR"]
        return sentence

    with_export(monkeypatch, export_recording_temp)
    out = tmp_path / "deit.ivit"
    result = compile_cli(checkpoint, out)
    assert result.exit_code == 0, result.output
    assert listing(tmp_path) == sorted([alive.name, "deit.ivit"])
    work = Path(seen["tempdir"]).parent  # TVM's lib0.o went there, not to /tmp
    assert seen["TMPDIR"] == seen["tempdir"] and work.parent == tmp_path
    assert work.name.startswith(f".deit.ivit{WORK_MARK}{os.getpid()}-")
    assert tempfile.gettempdir() != seen["tempdir"]  # restored after the compile
    assert os.environ.get("TMPDIR") != seen["TMPDIR"]


def test_artifact_folder_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = compile_model(quantized(DEIT), LLVM, tmp_path / "deit.ivit", progress=False).out
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    assert (out / MANIFEST).stat().st_mode & 0o777 == 0o640
    assert listing(tmp_path) == ["deit.ivit"]


def test_llvm_library_is_byte_reproducible(tmp_path):
    """Dynamic batch: the shape functions' stores are sorted (schedules/shape_order.py)."""
    libraries = []
    for name in ("a.ivit", "b.ivit"):
        out = compile_model(quantized(DEIT), LLVM, tmp_path / name, progress=False).out
        libraries.append((out / LIBRARY).read_bytes())
    assert libraries[0] == libraries[1]
