"""ivit-tvm: integer-only I-ViT models from a PyTorch checkpoint to TVM kernels.

`ivit_tvm.load(path)` runs a compiled artifact with the TVM runtime alone; importing the
package imports neither PyTorch nor the TVM compiler.
"""

__version__ = "0.1.0"


def load(path, device=None):
    """Load an artifact written by ivit-compile (see ivit_tvm.runtime)."""
    from .runtime import load as _load

    return _load(path, device)
