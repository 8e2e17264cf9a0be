"""The import graph runs one way: benchmarks -> ivit_tvm (driver, CLI) -> schedules,
relay_passes -> ivit_tvm.ops / ivit_tvm.quant. Every import in the source tree (module level or
inside a function) is read with `ast` and checked against the layers below."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package name it installs as (setup.py's package_dir)
SOURCES = {
    "ivit_tvm": "ivit_tvm",
    "relay_passes": "relay_passes",
    "schedules": "ivit_tvm.schedules",
    "benchmarks": "ivit_tvm.benchmarks",
}
# (package prefix, layer): the longest matching prefix decides; higher may import lower.
LAYERS = (
    ("ivit_tvm.quant", 0),
    ("ivit_tvm.ops", 0),
    ("relay_passes", 1),
    ("ivit_tvm.schedules", 1),
    ("ivit_tvm", 2),
    ("ivit_tvm.benchmarks", 3),
)
# Same-layer arrows that are forbidden as well: (importer prefix, imported prefix).
FORBIDDEN_SIDEWAYS = (
    ("relay_passes", "ivit_tvm.schedules"),
    ("ivit_tvm.schedules", "relay_passes"),
    ("ivit_tvm.quant", "ivit_tvm.ops"),
)
# The TIR kernels stay free of torch: of the quant package they read only the constants.
OPS_MAY_IMPORT_FROM_QUANT = ("ivit_tvm.quant.constants",)


def layer_of(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, layer in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best[0])
        ):
            best = (prefix, layer)
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    parts[0] = SOURCES[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in a file, relative ones resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.append((node.lineno, target))
            # `from package import module` imports the module too
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def source_files() -> list[Path]:
    return sorted(p for folder in SOURCES for p in (ROOT / folder).rglob("*.py"))


def violations() -> list[str]:
    found = []
    for path in source_files():
        importer = module_name(path)
        own = layer_of(importer)
        for line, target in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if target.split(".")[0] in ("schedules", "benchmarks"):
                found.append(f"{where}: use ivit_tvm.{target} (the installed name)")
                continue
            other = layer_of(target)
            if other is None or own is None:
                continue
            if other[1] > own[1]:
                found.append(f"{where}: layer {other[0]} is above {own[0]}")
            elif any(importer.startswith(a) and target.startswith(b)
                     for a, b in FORBIDDEN_SIDEWAYS):
                found.append(f"{where}: {own[0]} and {other[0]} must not import each other")
            elif (importer.startswith("ivit_tvm.ops") and target.startswith("ivit_tvm.quant")
                  and target != "ivit_tvm.quant"
                  and not any(target == a or target.startswith(a + ".")
                              for a in OPS_MAY_IMPORT_FROM_QUANT)):
                found.append(f"{where}: ops may read only {OPS_MAY_IMPORT_FROM_QUANT}")
    return found


def test_every_source_folder_is_scanned():
    names = {module_name(p) for p in source_files()}
    for package in ("ivit_tvm.quant", "ivit_tvm.ops", "relay_passes", "ivit_tvm.schedules",
                    "ivit_tvm.benchmarks", "ivit_tvm.compile"):
        assert package in names


def test_imports_never_point_to_a_higher_layer():
    assert violations() == []


def test_checker_catches_an_upward_import(tmp_path, monkeypatch):
    bad = ROOT / "relay_passes" / "_layering_probe.py"
    bad.write_text("from ivit_tvm.frontend import from_model\n")
    try:
        found = violations()
    finally:
        bad.unlink()
    assert any("_layering_probe.py:1 imports ivit_tvm.frontend" in v for v in found)


@pytest.mark.parametrize("package", ["relay_passes", "ivit_tvm.schedules", "ivit_tvm.ops"])
def test_lower_layers_load_no_frontend_or_model_code(package):
    code = (f"import sys, {package}; "
            "print(sorted(m for m in sys.modules if m.startswith(('ivit_tvm.frontend', "
            "'ivit_tvm.models', 'ivit_tvm.checkpoint', 'ivit_tvm.quant.modules', "
            "'ivit_tvm.benchmarks'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
