"""Frontend: a loaded I-ViT model (integer buffers, frozen scales) -> Relax IRModule.

The module has two entry points over one graph:
- `main_int8(q_images: (B, C, H, W) int8) -> (B, classes) int32`: integer-only throughout;
- `main(images: (B, C, H, W) float32) -> (B, classes) int32`: quantizes at the entry
  (`ivit_quantize_input`, the only float op) and calls `main_int8`.
The logits' per-class float scale is returned beside the module (it is metadata).
B is symbolic unless a fixed batch is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, tirx

from ..models.registry import architecture
from ..ops.names import INPUT_QUANTIZE
from .graph import IntegerGraph

BATCH_VAR = "batch"


@dataclass
class FrontendResult:
    mod: tvm.IRModule
    logits_scale: np.ndarray  # (classes,) float32
    input_scale: float  # qact_input's scale: images / input_scale -> int8
    input_shape: tuple  # (B, C, H, W) with B = -1 when symbolic


def from_model(model, batch: int | None = None, narrow_exp: bool = True,
               byte_products: bool = False) -> FrontendResult:
    """Lower a frozen I-ViT model to Relax (see the module docstring). narrow_exp: Shiftmax and
    ShiftGELU per element in int32 where that is exact (ops.integer.exp_fits_int32), else
    int64; both are bit-exact, the faster depends on the target (Capabilities.int64_vectors).
    byte_products: int16 x int8 matmuls (16-bit probabilities @ V) as the sum of two 8-bit
    GEMMs, high and low bytes (ops.matmul), for targets whose GEMM units multiply 8-bit
    operands only (Capabilities.int8_tensor_cores); bit-exact as well."""
    cfg = model.config
    emit = architecture(cfg.arch).emit
    batch_dim = tirx.Var(BATCH_VAR, "int64") if batch is None else int(batch)
    image_shape = (batch_dim, cfg.in_chans, cfg.img_size, cfg.img_size)
    bb = relax.BlockBuilder()
    g = IntegerGraph(bb, narrow_exp=narrow_exp, byte_products=byte_products)
    input_act = model.qact_input

    q_images = relax.Var("q_images", relax.TensorType(image_shape, "int8"))
    with bb.function("main_int8", [q_images]):
        with bb.dataflow():
            logits, logits_scale = emit(g, model, q_images, input_act.scale(), batch_dim)
            out = bb.emit_output(logits)
        bb.emit_func_output(out)
    main_int8 = bb.get().get_global_var("main_int8")

    images = relax.Var("images", relax.TensorType(image_shape, "float32"))
    with bb.function("main", [images]):
        with bb.dataflow():
            q, _ = g.quantize_input(input_act, images)
            q = bb.emit_output(q)
        logits = bb.emit(relax.Call(main_int8, [q]))
        bb.emit_func_output(logits)

    return FrontendResult(
        mod=bb.finalize(),
        logits_scale=logits_scale.detach().cpu().numpy().astype(np.float32),
        input_scale=float(input_act.scale().item()),
        input_shape=(-1 if batch is None else int(batch), cfg.in_chans, cfg.img_size,
                     cfg.img_size),
    )


__all__ = ["FrontendResult", "from_model", "INPUT_QUANTIZE"]
