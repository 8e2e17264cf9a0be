"""The Relax pipeline for llvm targets: TVM's CPU pipeline (legalize, fuse, lower).

Scheduling of the fused integer kernels for VNNI comes next (see the issue tracker); the
pipeline is the one place to plug it in.
"""

from __future__ import annotations

import tvm
from tvm import relax


def cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    return relax.get_default_pipeline(target)
