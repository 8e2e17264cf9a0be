"""GPU benchmark and check suite: prepared here (prepare.py), run on the GPU machine (run.sh).

The GPU machine has Python 3.12 and torch but no TVM: the scripts that run there use the TVM
runtime carried in .gpu_carry/ (tvm_runtime.py) and never import the compiler or ivit_tvm.
"""
