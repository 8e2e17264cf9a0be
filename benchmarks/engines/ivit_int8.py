"""ivit-tvm INT8: the ivit-quantize checkpoint compiled by ivit_tvm.compile for llvm.

One artifact per model with a symbolic batch axis (the deployment users get); it runs with
`ivit_tvm.load(path).run(images)`: float32 NumPy images in, float32 NumPy logits out
(quantizing the input and scaling the int32 logits are inside the timed call).
"""

from __future__ import annotations

from pathlib import Path

from .base import Engine, Prepared, Settings, Workload
from .tvm_common import RUNTIME_ONLY, llvm_target


class IViTInt8(Engine):
    key = "ivit-tvm"
    label = "ivit-tvm INT8"
    precision = "int8"
    modules = ("tvm",)
    runtime_env = RUNTIME_ONLY

    def prepare(self, workload: Workload, settings: Settings) -> Prepared:
        from ivit_tvm.checkpoint import load_checkpoint
        from ivit_tvm.compile import compile_model
        from ivit_tvm.manifest import file_sha256

        model, _info = load_checkpoint(workload.checkpoint)
        out = Path(workload.folder) / "ivit_int8.ivit"
        report = compile_model(model, llvm_target(settings.mcpu), out, batch=None, force=True,
                               source=workload.checkpoint, progress=False,
                               checkpoint_sha256=file_sha256(workload.checkpoint))
        return Prepared(files={"artifact": str(out)}, weights_bytes=report.library_bytes,
                        notes=f"llvm -mcpu={settings.mcpu}, schedules.cpu pipeline, dynamic "
                              "batch; weights = model.so",
                        extra={"compile_seconds": report.seconds})

    def import_runtime(self) -> None:
        from tvm.runtime import vm  # noqa: F401  (the runtime only)

        import ivit_tvm.runtime  # noqa: F401

    def load(self, prepared: dict, workload: Workload, settings: Settings):
        import ivit_tvm

        model = ivit_tvm.load(prepared["files"]["artifact"])
        return lambda images: lambda: model.run(images)
