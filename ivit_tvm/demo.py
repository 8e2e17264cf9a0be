"""The digits demo behind `ivit-demo` (ivit_tvm.cli.demo, `make demo`): compile the bundled
QAT checkpoint for this CPU, run the test split through the artifact and print one table.

It compares the float model, the PyTorch integer reference and the compiled artifact on
scikit-learn's handwritten digits (ivit_tvm.data), checks that the artifact's int32 logits
equal the reference's on every image, and times the artifact.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import data

LATENCY_IMAGES = 100  # batch-1 runs timed (after one warm-up run)


@dataclass
class DemoResult:
    images: int
    accuracy: dict[str, float]  # row name -> top-1 percent
    same_prediction: int  # images where the artifact's arg-max equals the reference's
    bit_exact: int  # images where every int32 logit equals the reference's
    ms_per_image: float  # artifact, batch 1
    images_per_second: float  # artifact, batch `batch_size`
    batch_size: int
    compile_seconds: float

    @property
    def agreement(self) -> float:
        return 100.0 * self.same_prediction / self.images

    @property
    def ok(self) -> bool:
        return self.same_prediction == self.bit_exact == self.images

    def table(self) -> str:
        rows = [(name, f"{acc:6.2f} %") for name, acc in self.accuracy.items()]
        rows += [
            ("agreement with the reference",
             f"{self.agreement:6.2f} % ({self.same_prediction}/{self.images})"),
            ("logits bit-exact", f"{'yes' if self.bit_exact == self.images else 'NO'} "
                                 f"({self.bit_exact}/{self.images} images)"),
            ("latency, batch 1", f"{self.ms_per_image:6.2f} ms/image"),
            (f"throughput, batch {self.batch_size}", f"{self.images_per_second:6.0f} images/s"),
            ("compile time (llvm)", f"{self.compile_seconds:6.1f} s"),
        ]
        width = max(len(name) for name, _ in rows) + 2
        lines = [f"digits test split, {self.images} images"]
        return "\n".join(lines + [f"{name:<{width}}{value}" for name, value in rows])


def top1(logits: torch.Tensor | np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((np.asarray(logits).argmax(1) == labels).mean())


def in_batches(images: torch.Tensor, batch_size: int):
    return (images[start:start + batch_size] for start in range(0, len(images), batch_size))


def run_demo(out: str | os.PathLike, subset: int | None = None, batch_size: int = 64,
             progress: bool = True, log=print) -> DemoResult:
    """Compile the bundled QAT checkpoint into `out` (a new folder) and evaluate it."""
    from .checkpoint import load_checkpoint
    from .compile import compile_model, make_target
    from .evaluate import load_fp_model
    from .manifest import file_sha256
    from .runtime import load

    digits, labels = data.load_split("test")
    if subset is not None:
        digits, labels = digits[:subset], labels[:subset]
    model, info = load_checkpoint(data.DIGITS_QAT)
    ptq_model, _ = load_checkpoint(data.DIGITS_PTQ)
    fp_model = load_fp_model(model, data.DIGITS_FP)
    images = data.preprocess(digits, info.config.img_size)  # (N, 3, 32, 32) float32
    log(f"digits test split: {len(labels)} images, 8x8 -> {info.config.img_size}x"
        f"{info.config.img_size}; model {data.DIGITS_QAT.name}")

    with torch.no_grad():
        fp_logits = torch.cat([fp_model(x) for x in in_batches(images, batch_size)])
    ref_logits = torch.cat([model.forward_integer(x)[0]
                            for x in in_batches(images, batch_size)]).numpy()  # (N, K) int32
    ptq_logits = torch.cat([ptq_model.forward_integer(x)[0]
                            for x in in_batches(images, batch_size)])

    log(f"compiling (same as: ivit-compile {data.DIGITS_QAT} --target llvm -o {out})")
    report = compile_model(model, make_target("llvm"), out, source=str(data.DIGITS_QAT),
                           progress=progress, checkpoint_sha256=file_sha256(data.DIGITS_QAT))
    compiled = load(out)
    batch_images = [x.numpy() for x in in_batches(images, batch_size)]
    compiled.run_int(batch_images[0])  # warm-up
    start = time.perf_counter()
    tvm_logits = np.concatenate([compiled.run_int(x)[0] for x in batch_images])
    throughput = len(labels) / (time.perf_counter() - start)
    singles = images[:LATENCY_IMAGES].numpy()
    compiled.run_int(singles[:1])  # warm-up at batch 1
    start = time.perf_counter()
    single_logits = np.concatenate([compiled.run_int(singles[i:i + 1])[0]
                                    for i in range(len(singles))])
    ms_per_image = 1000.0 * (time.perf_counter() - start) / len(singles)

    exact = (tvm_logits == ref_logits).all(axis=1)
    exact[: len(singles)] &= (single_logits == ref_logits[: len(singles)]).all(axis=1)
    return DemoResult(
        images=len(labels),
        accuracy={
            "FP accuracy (timm float)": top1(fp_logits, labels),
            "PTQ integer reference (PyTorch)": top1(ptq_logits, labels),
            "QAT integer reference (PyTorch)": top1(ref_logits, labels),
            "ivit-tvm artifact (llvm)": top1(tvm_logits, labels),
        },
        same_prediction=int((tvm_logits.argmax(1) == ref_logits.argmax(1)).sum()),
        bit_exact=int(exact.sum()),
        ms_per_image=ms_per_image,
        images_per_second=throughput,
        batch_size=batch_size,
        compile_seconds=report.total_seconds,
    )
