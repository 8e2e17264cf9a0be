"""The models to benchmark: a quantized checkpoint and its float twin, written once per model.

    spec = parse_model("deit_tiny:img_size=32,patch_size=8,depth=2")
    workload = make_workload(spec, folder)

The checkpoint is what `ivit-quantize MODEL --random-init --calib random` makes (random
weights, scales calibrated on random images: latency does not depend on either). The float
model is the timm model of the same architecture holding the checkpoint's float weights (the
ivit_tvm.models.fp_weights name table, read backwards); it is saved as a timm state dict and
exported to ONNX with a dynamic batch axis for the engines that start from ONNX.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from .engines.base import Workload

INPUT_NAME = "images"  # the ONNX graph's input
OUTPUT_NAME = "logits"
ONNX_OPSET = 17
CALIBRATION = {"n": 2, "batch": 4, "seed": 0}  # ivit-quantize --num-batches --batch-size --seed
LABELS = {"deit_tiny": "DeiT-T", "deit_small": "DeiT-S", "deit_base": "DeiT-B",
          "vit_small": "ViT-S", "vit_base": "ViT-B", "vit_large": "ViT-L",
          "swin_tiny": "Swin-T", "swin_small": "Swin-S", "swin_base": "Swin-B"}


@dataclass(frozen=True)
class ModelSpec:
    """A model from the command line: a name and config overrides."""

    text: str
    name: str
    overrides: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        base = LABELS.get(self.name, self.name)
        if not self.overrides:
            return base
        return f"{base} ({', '.join(f'{k}={_show(v)}' for k, v in self.overrides)})"


def parse_model(text: str) -> ModelSpec:
    """`NAME[:FIELD=VALUE,...]`, e.g. `swin_tiny:img_size=32,depths=2/2,num_heads=3/6`.

    Values are integers or floats; `a/b/...` is a tuple (Swin's depths and heads)."""
    name, _, rest = text.partition(":")
    overrides = []
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"model '{text}': '{item}' is not FIELD=VALUE")
        overrides.append((key.strip(), _parse_value(value.strip(), text)))
    spec = ModelSpec(text, name.strip(), tuple(overrides))
    model_config_of(spec)  # fail now on an unknown name or field
    return spec


def model_config_of(spec: ModelSpec):
    from ivit_tvm.models import model_config

    return model_config(spec.name, **dict(spec.overrides))


def make_workload(spec: ModelSpec, folder: Path) -> Workload:
    """Write the checkpoint, the float weights and the ONNX export of `spec` into `folder`."""
    import torch

    from ivit_tvm.checkpoint import save_checkpoint
    from ivit_tvm.models import architecture
    from ivit_tvm.models.config import ALIASES
    from ivit_tvm.ptq import random_calibrated

    folder.mkdir(parents=True, exist_ok=True)
    config = model_config_of(spec)
    quantized = random_calibrated(config, batches=CALIBRATION["n"],
                                  batch_size=CALIBRATION["batch"], seed=CALIBRATION["seed"])
    checkpoint = save_checkpoint(quantized, folder / "ivit_ptq.pth", metadata_extra={
        "model_name": ALIASES.get(spec.name, spec.name), "weights": "random-init",
        "calibration": {"images": "random", **CALIBRATION}})
    timm_name = ALIASES.get(spec.name, spec.name)
    timm_kwargs = {key: _jsonable(getattr(config, key))
                   for key in architecture(config.arch).timm_fields}
    workload = Workload(
        key=spec.text, label=spec.label, config=config.to_dict(), timm_name=timm_name,
        timm_kwargs=timm_kwargs, checkpoint=str(checkpoint),
        fp_weights=str(folder / "timm_fp32.pth"), onnx_fp32=str(folder / "fp32.onnx"),
        folder=str(folder))
    model = _timm_model(workload)
    _load_float_weights(model, quantized, config)
    torch.save(model.state_dict(), workload.fp_weights)
    _export_onnx(model, workload)
    return workload


def fp_model(workload: Workload):
    """The float timm model of a workload with its saved weights, in eval mode."""
    import torch

    model = _timm_model(workload)
    model.load_state_dict(torch.load(workload.fp_weights, weights_only=True), strict=True)
    return model.eval()


def _timm_model(workload: Workload):
    import timm

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in workload.timm_kwargs.items()}
    return timm.create_model(workload.timm_name, pretrained=False, **kwargs).eval()


def _load_float_weights(model, quantized, config) -> None:
    """Copy our float parameters into the timm model (fp_weights' name table, backwards)."""
    from ivit_tvm.models.fp_weights import DERIVED_TIMM_BUFFERS, parameter_names

    ours = quantized.state_dict()
    state = {theirs: ours[mine] for mine, theirs in parameter_names(config).items()}
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys
               if k.rsplit(".", 1)[-1] not in DERIVED_TIMM_BUFFERS]
    if missing or result.unexpected_keys:
        raise ValueError(f"{config.arch} weights do not fit timm's {type(model).__name__}: "
                         f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


def _export_onnx(model, workload: Workload) -> None:
    import torch

    example = torch.zeros(1, *workload.input_chw)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript tracer and deprecation chatter
        torch.onnx.export(model, (example,), workload.onnx_fp32, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=ONNX_OPSET)


def _parse_value(value: str, text: str):
    if "/" in value:
        return tuple(_parse_value(v, text) for v in value.split("/"))
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValueError(f"model '{text}': value '{value}' is not a number (or a/b/... tuple)")


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _show(value) -> str:
    return "/".join(map(str, value)) if isinstance(value, tuple) else str(value)
