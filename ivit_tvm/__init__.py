"""ivit-tvm: integer-only I-ViT models from a PyTorch checkpoint to TVM kernels."""

__version__ = "0.1.0"
