"""CPU (llvm) schedules and pipeline."""
