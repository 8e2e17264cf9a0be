"""The deployable artifact: a folder with the compiled library and a JSON description.

    OUT/
      model.so             the Relax VM executable, weights embedded as constants
      ivit_artifact.json   model config, input and logits scales, target, versions, contents

This module is shared by the compiler and the runtime, so it imports neither torch nor
the TVM compiler.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from .manifest import file_sha256, manifest_problem

LIBRARY = "model.so"
MANIFEST = "ivit_artifact.json"
FORMAT_VERSION = 2  # 2: library_bytes, library_sha256, checkpoint_sha256


class ArtifactError(ValueError):
    """A missing, incomplete or incompatible artifact."""


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the artifact folder `path`, checked against manifest.SCHEMA."""
    folder = Path(path)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not an ivit-tvm artifact folder (run ivit-compile first)")
    if not manifest.is_file() or not (folder / LIBRARY).is_file():
        raise ArtifactError(f"{folder}: incomplete artifact, expected {MANIFEST} and {LIBRARY}; "
                            "compile it again with ivit-compile")
    try:
        meta = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{manifest}: corrupt manifest ({err}); recompile with ivit-compile"
                            ) from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version == 1:
        raise ArtifactError(f"{manifest}: written by an older ivit-tvm (format 1, no checksum "
                            "of model.so to verify); recompile with ivit-compile")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{manifest}: artifact format {version}, this ivit-tvm reads "
                            f"{FORMAT_VERSION}; recompile with ivit-compile")
    problem = manifest_problem(meta)
    if problem:
        raise ArtifactError(f"{manifest}: invalid manifest: {problem}; recompile with "
                            "ivit-compile")
    return meta


def verify_library(path: str | os.PathLike, meta: dict) -> Path:
    """The artifact's library, after checking its size and SHA-256 against the manifest (a
    truncated, empty or swapped model.so would crash the loader or run with wrong scales)."""
    library = Path(path) / LIBRARY
    size = library.stat().st_size
    if size != meta["library_bytes"]:
        raise ArtifactError(f"{library}: {size} bytes, the manifest expects "
                            f"{meta['library_bytes']} (truncated or replaced); recompile with "
                            "ivit-compile")
    digest = file_sha256(library)
    if digest != meta["library_sha256"]:
        raise ArtifactError(f"{library}: SHA-256 {digest[:16]}..., the manifest expects "
                            f"{meta['library_sha256'][:16]}... (replaced or corrupted, e.g. "
                            "another compile's model.so); recompile with ivit-compile")
    return library


def is_artifact(path: str | os.PathLike) -> bool:
    """A real folder (no link) holding a manifest: what --force may replace."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file()


def check_output_path(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an output whose writing would lose data, before any work: an existing path unless
    forced; anything but an artifact folder even when forced; the current folder or one above
    it. The parent folder must exist."""
    out = Path(out)
    here = Path.cwd().resolve()
    if out.resolve() == here or out.resolve() in here.parents:
        raise ArtifactError(f"{out}: the output cannot be the current folder or a folder above "
                            "it; give a new folder name with -o")
    if out.exists() or out.is_symlink():
        if not force:
            raise ArtifactError(f"{out} exists; choose another -o path or pass --force to "
                                "replace it")
        if not is_artifact(out):
            raise ArtifactError(f"{out} exists and is not an ivit-tvm artifact folder (no "
                                f"{MANIFEST}); --force replaces only artifacts: move it away "
                                "or choose another -o path")
    if not out.parent.is_dir():
        raise ArtifactError(f"{out.parent}: output folder does not exist")
    return out


WORK_MARK = ".ivit-tmp-"  # .NAME.ivit-tmp-PID-XXXXXXXX: one compile's work folder
_WORK_NAME = re.compile(r"^\..*\.ivit-tmp-(\d+)-[^.]+$")


def remove_stale_work(folder: Path) -> list[Path]:
    """Remove the work folders in `folder` left by killed processes (their PID is gone)."""
    removed = []
    for path in folder.glob(f".*{WORK_MARK}*"):
        match = _WORK_NAME.match(path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _rename_noreplace(src: Path, dst: Path) -> None:
    """Rename, failing with FileExistsError if `dst` exists (atomic where renameat2 exists)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # else: this filesystem cannot; fall back
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.rename(src, dst)  # a directory onto a non-empty one fails too


def _identity(path: Path) -> tuple | None:
    """What tells one folder from its replacement: its inode and its manifest's (None: absent)."""
    try:
        folder = path.lstat()
    except FileNotFoundError:
        return None
    try:
        manifest = (path / MANIFEST).lstat()
    except OSError:
        return folder.st_dev, folder.st_ino
    return folder.st_dev, folder.st_ino, manifest.st_ino, manifest.st_mtime_ns, manifest.st_size


class AtomicFolder:
    """Write a folder in a private work folder next to its destination, then claim the
    destination in one rename.

    The work folder (.NAME.ivit-tmp-PID-XXXXXXXX, holding `artifact/` and `tmp/` for the
    compiler's temporary files) is removed on every exit path; ones left by killed processes
    are removed on entry. The rename is the claim: if another process wrote the destination
    meanwhile, this one raises ArtifactError and leaves nothing. With `force` the artifact found
    on entry is moved aside first; if it is not the same one any more (another compile replaced
    it), or the claim fails, it is put back and this compile reports it.
    """

    def __init__(self, out: str | os.PathLike, force: bool = False):
        self.out = Path(out)
        self.force = force
        self.work: Path | None = None
        self.replaces: tuple | None = None

    @property
    def folder(self) -> Path:
        return self.work / "artifact"

    @property
    def temp(self) -> Path:
        return self.work / "tmp"

    def __enter__(self) -> Path:
        remove_stale_work(self.out.parent)
        self.replaces = _identity(self.out) if self.force else None
        prefix = f".{self.out.name}{WORK_MARK}{os.getpid()}-"
        self.work = Path(tempfile.mkdtemp(prefix=prefix, dir=self.out.parent))
        self.folder.mkdir()  # mode 0777 & ~umask, like any other output
        self.temp.mkdir()
        return self.folder

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                self._claim()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        return False

    def _claim(self) -> None:
        lost = (f"{self.out} was written by another process during this compile; this one "
                "wrote nothing: check it, then compile again (another -o path, or --force to "
                "replace it)")
        old = None
        if self.replaces is not None:
            old = self.work / "replaced"
            try:
                os.rename(self.out, old)
            except FileNotFoundError:  # removed meanwhile: the claim below decides
                old = None
            if old is not None and _identity(old) != self.replaces:
                self._put_back(old)
                raise ArtifactError(lost)
        try:
            _rename_noreplace(self.folder, self.out)
        except FileExistsError:
            if old is not None:
                self._put_back(old)
            raise ArtifactError(lost) from None

    def _put_back(self, old: Path) -> None:
        """Return a folder moved aside to its place; if that place was taken meanwhile, keep it
        next to it (never deleted with the work folder)."""
        try:
            _rename_noreplace(old, self.out)
        except OSError:
            kept = self.out.with_name(f"{self.out.name}.replaced-{os.getpid()}")
            os.rename(old, kept)
            raise ArtifactError(f"{self.out} was written by another process during this "
                                f"compile; the folder it replaced is kept as {kept}") from None


def write_manifest(folder: Path, meta: dict) -> None:
    """Write the manifest, refusing one that read_manifest would refuse."""
    meta = {"format_version": FORMAT_VERSION, **meta}
    problem = manifest_problem(meta)
    if problem:
        raise ArtifactError(f"{folder / MANIFEST}: the compiled model's manifest {problem}; "
                            "please report this with the checkpoint")
    (folder / MANIFEST).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
