"""The deployable artifact: a folder with the compiled library and a JSON description.

    OUT/
      model.so             the Relax VM executable, weights embedded as constants
      ivit_artifact.json   model config, input and logits scales, target, versions, contents

This module is shared by the compiler and the runtime, so it imports neither torch nor
the TVM compiler.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

LIBRARY = "model.so"
MANIFEST = "ivit_artifact.json"
FORMAT_VERSION = 1


class ArtifactError(ValueError):
    """A missing, incomplete or incompatible artifact."""


def read_manifest(path: str | os.PathLike) -> dict:
    folder = Path(path)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not an ivit-tvm artifact folder (run ivit-compile first)")
    if not manifest.is_file() or not (folder / LIBRARY).is_file():
        raise ArtifactError(f"{folder}: incomplete artifact, expected {MANIFEST} and {LIBRARY}; "
                            "compile it again with ivit-compile")
    try:
        meta = json.loads(manifest.read_text())
    except json.JSONDecodeError as err:
        raise ArtifactError(f"{manifest}: corrupt manifest ({err}); compile again") from err
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{manifest}: artifact format {version}, this ivit-tvm reads "
                            f"{FORMAT_VERSION}; compile again with this version")
    return meta


def check_output_path(out: str | os.PathLike, force: bool) -> Path:
    """Refuse an existing output unless forced; the parent folder must exist."""
    out = Path(out)
    if out.exists() and not force:
        raise ArtifactError(f"{out} exists; choose another -o path or pass --force to replace it")
    if not out.parent.is_dir():
        raise ArtifactError(f"{out.parent}: output folder does not exist")
    return out


class AtomicFolder:
    """Write a folder next to its destination, then move it into place in one rename.

    On any error the temporary folder is removed and the destination is left untouched.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def write_manifest(folder: Path, meta: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta},
                                              indent=2, sort_keys=True) + "\n")
