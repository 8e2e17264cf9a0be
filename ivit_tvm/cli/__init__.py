"""Command-line tools, one module per console script (declared in setup.py):

    quantize  ivit-quantize   float (timm) weights -> calibrated I-ViT checkpoint
    compile   ivit-compile    checkpoint -> artifact folder (llvm or cuda)
    run       ivit-run        artifact -> top classes of images (TVM runtime only)
    eval      ivit-eval       top-1/top-5: float model, integer reference, artifact
    qat       ivit-qat        quantization-aware training on an ImageFolder dataset
    demo      ivit-demo       the bundled digits model, compiled and checked end to end

ivit-bench lives with its harness in ivit_tvm.benchmarks.cli. Every command is a click command
decorated with `common.reports_errors`: an expected failure (a bad file, a wrong option value,
...) prints one line `PROG: error: ...` on stderr and exits with status 1; click's own usage
errors keep click's format and status 2. Commands that write files write them atomically, so a
failure never leaves a partial output.
"""
