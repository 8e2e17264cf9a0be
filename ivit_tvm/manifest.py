"""The artifact manifest's schema (ivit_artifact.json), checked whenever a manifest is read.

Plain Python, no torch and no TVM: the runtime reads it. A manifest that is missing a key,
holds a value of the wrong type, a scale that is not finite and positive or an input shape
that is not NCHW is refused with one line naming the key, so a hand-edited or foreign
manifest never feeds wrong numbers to the model.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable

HASH_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_scale(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _input_shape(value) -> str | None:
    if not isinstance(value, list) or len(value) != 4 or not all(map(_is_int, value)):
        return "must be a list of 4 integers (batch, channels, height, width)"
    if (value[0] != -1 and value[0] < 1) or min(value[1:]) < 1:
        return "must hold positive sizes (batch -1 when dynamic)"
    return None


def _logits_scale(value) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of per-class scales"
    bad = [i for i, v in enumerate(value) if not _positive_scale(v)]
    if bad:
        return f"must hold finite positive numbers; class {bad[0]} has {value[bad[0]]!r}"
    return None


def _check(test: Callable[[object], bool], need: str) -> Callable[[object], str | None]:
    return lambda value: None if test(value) else f"must be {need}"


# key -> check returning None or what is wrong; extra keys are allowed (provenance, notes).
SCHEMA: dict[str, Callable[[object], str | None]] = {
    "config": _check(lambda v: isinstance(v, dict), "an object (the model configuration)"),
    "input_scale": _check(_positive_scale, "a finite positive number"),
    "input_bits": _check(lambda v: _is_int(v) and 2 <= v <= 8, "an integer from 2 to 8"),
    "input_shape": _input_shape,
    "logits_scale": _logits_scale,
    "target": _check(lambda v: isinstance(v, dict) and isinstance(v.get("kind"), str),
                     "an object with a string 'kind'"),
    "library_bytes": _check(lambda v: _is_int(v) and v > 0, "a positive integer"),
    "library_sha256": _check(lambda v: isinstance(v, str) and _SHA256.fullmatch(v),
                             "64 lowercase hex digits"),
    "checkpoint_sha256": _check(lambda v: v is None or isinstance(v, str)
                                and _SHA256.fullmatch(v), "null or 64 lowercase hex digits"),
}


def manifest_problem(meta: object) -> str | None:
    """What makes `meta` no valid manifest (naming the key), or None."""
    if not isinstance(meta, dict):
        return f"holds a {type(meta).__name__}, not an object"
    for key, check in SCHEMA.items():
        if key not in meta:
            return f"has no {key!r}"
        problem = check(meta[key])
        if problem:
            return f"{key!r} {problem} (found {_short(meta[key])})"
    classes = meta["config"].get("num_classes")
    if _is_int(classes) and classes != len(meta["logits_scale"]):
        return (f"'logits_scale' has {len(meta['logits_scale'])} scales but the model has "
                f"{classes} classes")
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
