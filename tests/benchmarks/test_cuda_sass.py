"""benchmarks/cuda_sass: the per-kernel SASS table of a model built for CUDA (no GPU needed;
nvcc and cuobjdump are)."""

from __future__ import annotations

import shutil

import pytest
from ivit_tvm.benchmarks import cuda_sass
from ivit_tvm.schedules.cuda.toolkit import find_cuda_tool


@pytest.mark.skipif(shutil.which("nvcc") is None or find_cuda_tool("cuobjdump") is None,
                    reason="needs nvcc and cuobjdump")
def test_reduced_deit_table_lists_tensor_core_gemms_without_local_memory():
    rows = cuda_sass.kernel_table("deit_tiny", "sm_80", img_size=32, patch_size=8, depth=2,
                                  num_classes=10)
    by_name = {row["kernel"]: row for row in rows}
    gemms = [row for name, row in by_name.items() if "dense" in name and "IMMA" in row["opcodes"]]
    assert len(gemms) >= 4  # qkv, proj, fc1, fc2 of each block (the head runs dp4a)
    assert all(row["opcodes"]["IMMA"] > 0 and row["total"] > row["opcodes"]["IMMA"]
               for row in gemms)
    assert all(row["stack_bytes"] == 0 and "LDL" not in row["opcodes"] for row in rows)
    assert not any(name.startswith("reshape") for name in by_name)
    table = cuda_sass.markdown(rows, "reduced DeiT")
    assert table.count("\n| `") == len(rows)
