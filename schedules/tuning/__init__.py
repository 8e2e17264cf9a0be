"""Tuning with MetaSchedule (ivit-tune) and applying its records (ivit-compile, llvm).

- tasks: a model's GEMM kernels as the CPU pipeline sees them (dense + epilogue, matmuls);
- search: MetaSchedule's search over them, measured here or through an RPC tracker;
- database: one MetaSchedule JSON database per target key (schedules/tuned/<kind>-<cpu>/);
- apply: ApplyTunedSchedules, the CPU pipeline step that takes a record's schedule;
- intrinsics: TVM's `dot_16x4_vnni` fixed, and MetaSchedule's slow intrinsic import skipped.
"""
