"""Names the compile stages share: PrimFunc names the frontend gives, block names the TE ops
give, and the patterns passes and schedules match them by. Defined once, here, at the bottom
layer, so relay_passes and schedules need not import the frontend to know them.

TVM appends a number to a repeated PrimFunc name (ivit_dense, ivit_dense1, ...) and FuseOps
prefixes "fused_"; the patterns below accept both.
"""

from __future__ import annotations

import re

# ---- PrimFunc names (frontend/graph.py emits them) --------------------------------------
INPUT_QUANTIZE = "ivit_quantize_input"  # the one PrimFunc allowed to read floats
DENSE = "ivit_dense"
BATCH_MATMUL = "ivit_batch_matmul"
REQUANTIZE = "ivit_requantize"
REQUANTIZE_ADD = "ivit_requantize_add"
LAYERNORM = "ivit_layernorm"
SHIFTMAX = "ivit_shiftmax"
SHIFTMAX_MASKED = "ivit_shiftmax_masked"
SHIFTGELU = "ivit_shiftgelu"

GEMM_FUNC = re.compile(rf"({DENSE}|{BATCH_MATMUL})\w*")  # ivit_dense3, ivit_batch_matmul1, ...
REQUANTIZE_FUNC = re.compile(rf"{REQUANTIZE}\d*")  # not ivit_requantize_add
INPUT_QUANTIZE_FUNC = re.compile(rf"(fused_)?{INPUT_QUANTIZE}\d*")

# ---- block names (ops/*.py te.compute names) --------------------------------------------
DENSE_ACC_BLOCK = "dense_acc"  # ops.integer_dense's reduction
DENSE_BIAS_BLOCK = "dense_bias"
BATCH_MATMUL_ACC_BLOCK = "batch_matmul_acc"  # ops.integer_batch_matmul's reduction
