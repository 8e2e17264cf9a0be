"""Load the carried TVM runtime (no compiler) and the CUDA artifacts built by prepare.py.

`TVM_USE_RUNTIME_LIB=1` makes `import tvm` load only libtvm_runtime; in that mode TVM does
not load its CUDA runtime library (libtvm_runtime_cuda.so) itself, so this module does, before
any artifact with CUDA kernels is loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CARRY = Path(__file__).resolve().parents[2] / ".gpu_carry"
SITE = Path(os.environ.get("IVIT_TVM_SITE", "/tmp/ivit_tvm_site"))


def import_tvm(site: Path = SITE):
    """Import the carried runtime-only TVM from `site` (extracted by run.sh)."""
    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")  # no JIT build at import
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    from ivit_tvm.runtime import import_tvm as import_runtime

    return import_runtime()


def load_vm(path: Path, device):
    """A VirtualMachine over the exported library at `path` on `device`."""
    import tvm
    from tvm.runtime.vm import VirtualMachine  # a submodule: not loaded by `import tvm`

    return VirtualMachine(tvm.runtime.load_module(str(path)), device)
