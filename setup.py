from setuptools import find_packages, setup

setup(
    name="ivit-tvm",
    version="0.1.0",
    description="Integer-only I-ViT vision transformers from PyTorch checkpoints to TVM kernels",
    python_requires=">=3.11",
    # schedules/ and benchmarks/ sit at the top of the repository (the asked-for layout) but
    # install inside the project's namespace, so no generic top-level name lands in a user's
    # site-packages: `import ivit_tvm.schedules`, `import ivit_tvm.benchmarks`.
    packages=find_packages(include=["ivit_tvm*", "relay_passes*"]) + [
        f"ivit_tvm.{name}" for name in find_packages(include=["schedules*", "benchmarks*"])
    ],
    package_dir={"ivit_tvm.schedules": "schedules", "ivit_tvm.benchmarks": "benchmarks"},
    package_data={"ivit_tvm": ["data/*"], "ivit_tvm.schedules.cuda": ["*.c"],
                  "ivit_tvm.schedules": ["tuned/*/*.json"]},  # ivit-tune's databases
    install_requires=[
        "apache-tvm[meta-schedule,rpc]==0.27.0.post1",
        "apache-tvm-ffi==0.1.14.post0",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "timm",
        "numpy",
        "onnx",
        "click",
        "tqdm",
    ],
    entry_points={
        "console_scripts": [
            "ivit-quantize=ivit_tvm.cli.quantize:quantize_cmd",
            "ivit-compile=ivit_tvm.cli.compile:compile_cmd",
            "ivit-tune=ivit_tvm.cli.tune:tune_cmd",
            "ivit-run=ivit_tvm.cli.run:run_cmd",
            "ivit-eval=ivit_tvm.cli.eval:eval_cmd",
            "ivit-qat=ivit_tvm.cli.qat:qat_cmd",
            "ivit-demo=ivit_tvm.cli.demo:demo_cmd",
            "ivit-bench=ivit_tvm.benchmarks.cli:bench_cmd",
            "ivit-profile=ivit_tvm.benchmarks.profile:profile_cmd",
        ],
    },
)
