"""CPU (llvm) build: `pipeline.cpu_pipeline(target)`, the Relax pipeline with the schedules.

- pipeline: TVM's llvm pipeline + PackDenseGEMMs + ScheduleCPU (entry point);
- dense: int8 dense on packed weights (vpdpbusd), its compile-time packing and schedule;
- matmul: attention's batch matmuls, operands packed at run time (vpdpbusd / vpdpwssd);
- gemm: the register-blocked tiling both use; vnni: the intrinsics, CPU feature checks;
- generic: everything else (elementwise, row-wise kernels): inline, parallelize, vectorize;
- division: int64 floordiv through float64 where exact (vectorizable);
- splice: swap a block of a fused PrimFunc for a TE definition's loop nests.
"""
