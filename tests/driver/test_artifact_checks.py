"""Bad artifacts and bad images are refused with one line naming the file, key or shape and
what to do: a corrupt or swapped model.so, an invalid manifest, images of the wrong dtype,
values or shape, and ivit-run on a fixed-batch artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support import DEIT, images, quantized

import ivit_tvm
from ivit_tvm.artifact import LIBRARY, MANIFEST, ArtifactError
from ivit_tvm.cli.run import run_cmd
from ivit_tvm.compile import compile_model, make_target
from ivit_tvm.runtime import InputError

BATCH = 2  # a fixed batch, so one artifact also serves the ivit-run and shape tests


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "deit.ivit"
    compile_model(quantized(DEIT), make_target("llvm"), out, batch=BATCH, progress=False)
    return out


@pytest.fixture(scope="module")
def model(built):
    return ivit_tvm.load(built)


def copy_of(built: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy.ivit"
    shutil.copytree(built, out)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def truncate(library: Path) -> None:
    library.write_bytes(library.read_bytes()[:len(library.read_bytes()) // 2])


def flip_one_byte(library: Path) -> None:  # same size: another compile's library, say
    data = bytearray(library.read_bytes())
    data[len(data) // 2] ^= 0xFF
    library.write_bytes(bytes(data))


@pytest.mark.parametrize("corrupt, expected", [
    (truncate, "bytes, the manifest expects"),
    (lambda library: library.write_bytes(b""), "0 bytes, the manifest expects"),
    (flip_one_byte, "SHA-256"),
], ids=["truncated", "empty", "swapped"])
def test_corrupt_library_is_refused_before_loading(built, tmp_path, corrupt, expected):
    out = copy_of(built, tmp_path)
    corrupt(out / LIBRARY)
    before = snapshot(out)
    with pytest.raises(ArtifactError, match=expected) as err:
        ivit_tvm.load(out)
    assert str(out / LIBRARY) in str(err.value) and "recompile with ivit-compile" in str(err.value)
    result = CliRunner().invoke(run_cmd, [str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("ivit-run: error: ") and expected in result.output
    assert snapshot(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["copy.ivit"]


def drop(key):
    return lambda meta: meta.pop(key)


def setter(key, value):
    return lambda meta: meta.__setitem__(key, value)


def first_scale(value):
    return lambda meta: meta["logits_scale"].__setitem__(0, value)


def older_format(meta):
    meta["format_version"] = 1
    for key in ("library_bytes", "library_sha256", "checkpoint_sha256"):
        meta.pop(key)


@pytest.mark.parametrize("edit, names", [
    (drop("logits_scale"), "'logits_scale'"),
    (drop("input_shape"), "'input_shape'"),
    (first_scale(-1.0), "'logits_scale'"),
    (first_scale(0.0), "'logits_scale'"),
    (first_scale(float("nan")), "'logits_scale'"),
    (setter("input_scale", float("inf")), "'input_scale'"),
    (setter("input_shape", [-1, 3, 32]), "'input_shape'"),
    (drop("library_sha256"), "'library_sha256'"),
    (older_format, "older ivit-tvm"),
], ids=["no-logits-scale", "no-input-shape", "negative-scale", "zero-scale", "nan-scale",
        "inf-input-scale", "rank-3-shape", "no-library-hash", "format-1"])
def test_invalid_manifest_is_refused_naming_the_key(built, tmp_path, edit, names):
    out = copy_of(built, tmp_path)
    meta = json.loads((out / MANIFEST).read_text())
    edit(meta)
    (out / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError) as err:
        ivit_tvm.load(out)
    message = str(err.value)
    assert str(out / MANIFEST) in message and names in message
    assert "recompile with ivit-compile" in message and "\n" not in message


def test_manifest_records_library_and_checkpoint_hashes(built):
    meta = json.loads((built / MANIFEST).read_text())
    assert meta["format_version"] == 2 and meta["library_bytes"] == (built / LIBRARY).stat().st_size
    assert len(meta["library_sha256"]) == 64 and meta["checkpoint_sha256"] is None


@pytest.mark.parametrize("array, hint", [
    ((images(DEIT, seed=1, batch=BATCH) * 255).clamp(0, 255).numpy().astype(np.uint8),
     "got uint8; normalise them first"),
    (np.zeros((BATCH, 3, 32, 32), np.int64), "got int64; normalise them first"),
], ids=["uint8", "int64"])
def test_run_refuses_integer_pixels(model, array, hint):
    for method in (model.run, model.run_int):
        with pytest.raises(InputError, match=hint) as err:
            method(array)
        assert "run_int8" in str(err.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e300])
def test_run_refuses_non_finite_pixels(model, value):
    x = images(DEIT, seed=2, batch=BATCH).numpy().astype(np.float64)
    x[1, 2, 3, 4] = value
    with pytest.raises(InputError, match=r"1 pixels are NaN or infinite .* \(1, 2, 3, 4\)"):
        model.run(x)


@pytest.mark.parametrize("array", [
    np.zeros((BATCH, 3, 32, 32), np.float32),
    np.full((BATCH, 3, 32, 32), 1000, np.int32),
    np.zeros((BATCH, 3, 32, 32), np.uint8),
], ids=["float32", "int32-out-of-range", "uint8"])
def test_run_int8_refuses_anything_but_int8(model, array):
    with pytest.raises(InputError, match=f"run_int8 takes int8 images.*got {array.dtype}; "
                                         "quantize them first"):
        model.run_int8(array)


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (3, 32, 32), (BATCH, 3, 16, 16),
                                   (0, 3, 32, 32)])
def test_wrong_shape_names_both_shapes(model, shape):
    with pytest.raises(InputError) as err:
        model.run(np.zeros(shape, np.float32))
    assert str(shape) in str(err.value) and f"({BATCH}, 3, 32, 32)" in str(err.value)
    with pytest.raises(InputError, match=r"\(2, 3, 32, 32\)"):
        model.run_int8(np.zeros(shape, np.int8))


def test_good_images_still_match_the_reference(model):
    x = images(DEIT, seed=4, batch=BATCH)
    np.testing.assert_array_equal(model.run_int(x.numpy().astype(np.float64))[0],
                                  quantized(DEIT).forward_integer(x)[0].numpy())


def test_run_uses_the_fixed_batch_by_default(built):
    result = CliRunner().invoke(run_cmd, [str(built), "--top", "1"])
    assert result.exit_code == 0, result.output
    assert [line.split(":")[0] for line in result.output.splitlines()] == ["image 0", "image 1"]
    result = CliRunner().invoke(run_cmd, [str(built), "--batch", "3"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--batch 3: the artifact was compiled for batch 2; pass --batch 2" in result.output


@pytest.mark.parametrize("array, expected", [
    (np.zeros((BATCH, 3, 32, 32), np.uint8), "holds uint8 values; ivit-run takes preprocessed"),
    (np.zeros((BATCH, 3, 16, 16), np.float32), "(2, 3, 16, 16)"),
])
def test_run_cli_names_the_images_file(built, tmp_path, array, expected):
    path = tmp_path / "images.npy"
    np.save(path, array)
    result = CliRunner().invoke(run_cmd, [str(built), "--images", str(path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"ivit-run: error: {path}: ")
    assert expected in result.output and len(result.output.strip().splitlines()) == 1
