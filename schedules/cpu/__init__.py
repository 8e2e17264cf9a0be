"""CPU (llvm) build: `pipeline.cpu_pipeline(info)`, the Relax pipeline with the schedules.

- pipeline: TVM's llvm pipeline + PackDenseGEMMs + ScheduleCPU (entry points; float variant);
- rules: the ordered schedule rules ScheduleCPU runs on every fused kernel;
- packing: PackDenseGEMMs, constant int8 dense weights packed at compile time;
- isa: which instructions the GEMMs use per CPU ISA (AVX512-VNNI, AVX-VNNI, AVX2, generic);
- dense: int8 dense on packed weights (vpdpbusd / vpmaddwd), its TE kernel and schedule;
- matmul: attention's batch matmuls, operands packed at run time (vpdpbusd / vpdpwssd /
  vpmaddwd);
- float_dense: the float32 variant's packed GEMM and matmuls (the FP32 TVM baseline);
- gemm: the register-blocked tiling; vnni, avx2: the intrinsics;
- generic: everything else (elementwise, row-wise kernels): inline, parallelize, vectorize;
- division: int64 floordiv through float64 where exact (vectorizable);
- splice: swap a block of a fused PrimFunc for a TE definition's loop nests.
"""
