from setuptools import find_packages, setup

setup(
    name="ivit-tvm",
    version="0.1.0",
    description="Integer-only I-ViT vision transformers from PyTorch checkpoints to TVM kernels",
    python_requires=">=3.11",
    packages=find_packages(include=["ivit_tvm*", "relay_passes*", "schedules*", "benchmarks*"]),
    package_data={"ivit_tvm": ["data/*"], "schedules": ["**/*.json"]},
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
            "ivit-quantize=ivit_tvm.cli:quantize_cmd",
            "ivit-compile=ivit_tvm.cli_compile:compile_cmd",
            "ivit-run=ivit_tvm.cli_run:run_cmd",
            "ivit-eval=ivit_tvm.cli_eval:eval_cmd",
            "ivit-qat=ivit_tvm.cli_qat:qat_cmd",
            "ivit-demo=ivit_tvm.demo:demo_cmd",
            "ivit-bench=ivit_tvm.cli_bench:bench_cmd",
        ],
    },
)
