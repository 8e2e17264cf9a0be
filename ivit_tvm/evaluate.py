"""Accuracy of one checkpoint three ways: the float model, the PyTorch integer reference and
the compiled artifact, on the same preprocessed images.

- FP: timm's float model (exact GELU, float softmax and LayerNorm) holding the checkpoint's
  float parameters, mapped back through the name table of `models.fp_weights`; or other float
  weights (e.g. the ones a QAT run started from) given as a timm state_dict.
- integer reference: `model.forward_integer`, the function every compiled model must equal.
- artifact: `ivit_tvm.load(OUT).run_int`; its int32 logits are compared with the reference's
  bit for bit on every image.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .models import ModelConfig, architecture
from .models.fp_weights import DERIVED_TIMM_BUFFERS, parameter_names

TOP_K = (1, 5)


def build_fp_model(config: ModelConfig) -> nn.Module:
    """timm's float model for a configuration (randomly initialised, eval mode)."""
    arch = architecture(config.arch)
    model = arch.timm_model(**{name: getattr(config, name) for name in arch.timm_fields})
    return model.eval()


def load_timm_state(model: nn.Module, timm_state: dict[str, torch.Tensor], source: str) -> None:
    """Load a timm state_dict into `model` strictly, except the buffers timm derives itself."""
    missing, unexpected = model.load_state_dict(timm_state, strict=False)
    missing = [k for k in missing if k.rsplit(".", 1)[-1] not in DERIVED_TIMM_BUFFERS]
    unexpected = [k for k in unexpected if k.rsplit(".", 1)[-1] not in DERIVED_TIMM_BUFFERS]
    if missing or unexpected:
        raise ValueError(f"{source}: float weights do not fit the checkpoint's model: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}; pass weights of the same "
                         "architecture and size")


def fp_model_from_quantized(model: nn.Module) -> nn.Module:
    """timm's float model with the float parameters of a quantized model (a copy)."""
    state = dict(model.named_parameters())
    timm_state = {theirs: state[ours].detach().clone()
                  for ours, theirs in parameter_names(model.config).items()}
    fp = build_fp_model(model.config)
    load_timm_state(fp, timm_state, type(model).__name__)
    return fp


def load_fp_model(model: nn.Module, weights: str | Path | None = None) -> nn.Module:
    """timm's float model for a quantized model: with the float timm state_dict in `weights`
    (raw or {"model": ...}), else with the quantized model's own float parameters."""
    if weights is None:
        return fp_model_from_quantized(model)
    from .checkpoint import read_torch_file, unwrap_state_dict

    state = unwrap_state_dict(read_torch_file(weights, what="weights file"), weights)
    fp = build_fp_model(model.config)
    load_timm_state(fp, state, str(weights))
    return fp


@dataclass
class TopK:
    """Running top-k hit counts of one model."""

    hits: dict[int, int] = field(default_factory=lambda: dict.fromkeys(TOP_K, 0))
    count: int = 0

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits (B, K) of any dtype, labels (B,) int64."""
        k_max = min(max(TOP_K), logits.shape[1])
        ranked = logits.double().topk(k_max, dim=1).indices  # (B, k_max)
        correct = ranked == labels[:, None]
        for k in self.hits:
            self.hits[k] += int(correct[:, :k].any(dim=1).sum())
        self.count += len(labels)

    def accuracy(self, k: int) -> float:
        """Top-k accuracy in percent."""
        return 100.0 * self.hits[k] / max(self.count, 1)


@dataclass
class EvalResult:
    """Top-1/top-5 per model name, and how the artifact's logits compare with the reference."""

    images: int = 0
    top: dict[str, TopK] = field(default_factory=dict)
    same_prediction: int = 0  # artifact's arg-max equals the reference's
    bit_exact: int = 0  # artifact's int32 logits equal the reference's, every class
    compared: int = 0

    @property
    def agreement(self) -> float:
        """Percent of images where the artifact predicts the reference's class."""
        return 100.0 * self.same_prediction / max(self.compared, 1)

    def as_dict(self) -> dict:
        row = {name: {f"top{k}": round(t.accuracy(k), 3) for k in TOP_K}
               for name, t in self.top.items()}
        out = {"images": self.images, "accuracy": row,
               "images_per_model": {name: t.count for name, t in self.top.items()}}
        if self.compared:
            out.update(agreement=round(self.agreement, 3),
                       bit_exact_images=self.bit_exact, compared=self.compared)
        return out

    def table(self) -> str:
        lines = [f"{'model':<22}{'top-1':>9}{'top-5':>9}{'images':>9}"]
        lines += [f"{name:<22}{t.accuracy(1):>8.2f}%{t.accuracy(5):>8.2f}%{t.count:>9}"
                  for name, t in self.top.items()]
        if self.compared:
            lines.append(f"artifact vs reference: {self.agreement:.2f}% same predictions, "
                         f"{self.bit_exact}/{self.compared} images with bit-exact logits")
        return "\n".join(lines)


Predictor = Callable[[torch.Tensor], torch.Tensor]


def reference_predictor(model: nn.Module) -> Predictor:
    """Images -> int32 logits of the PyTorch integer reference."""
    return lambda images: model.forward_integer(images)[0]


def artifact_predictor(compiled) -> Predictor:
    """Images -> int32 logits of a loaded artifact (ivit_tvm.load)."""
    return lambda images: torch.from_numpy(compiled.run_int(images.numpy())[0])


def fp_predictor(fp_model: nn.Module) -> Predictor:
    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return fp_model(images)
    return predict


def evaluate(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             predictors: dict[str, Predictor], compare: tuple[str, str] | None = None,
             total: int | None = None, progress: bool = True,
             every: dict[str, int] | None = None) -> EvalResult:
    """Top-1/top-5 of every predictor over (images, labels) batches; `compare` names the
    (reference, artifact) pair whose int32 logits are checked image by image.

    `every` samples slow predictors: {name: N} runs that one on batches 0, N, 2N, ... only
    (its accuracy is over those images; the comparison too, where it is one of the pair)."""
    every = every or {}
    if any(n < 1 for n in every.values()):
        raise ValueError(f"every: sampling intervals must be at least 1, got {every}")
    result = EvalResult(top={name: TopK() for name in predictors})
    bar = tqdm(batches, total=total, desc="evaluating", unit="batch", disable=not progress)
    start = time.perf_counter()
    for index, (images, labels) in enumerate(bar):
        logits = {name: predict(images) for name, predict in predictors.items()
                  if index % every.get(name, 1) == 0}
        for name, out in logits.items():
            result.top[name].update(out, labels)
        result.images += len(labels)
        if compare is not None and all(name in logits for name in compare):
            ref, art = (logits[name] for name in compare)
            result.compared += len(labels)
            result.same_prediction += int((ref.argmax(1) == art.argmax(1)).sum())
            result.bit_exact += int((ref.to(torch.int64) == art.to(torch.int64))
                                    .all(dim=1).sum())
        rate = result.images / max(time.perf_counter() - start, 1e-9)
        bar.set_postfix_str(" ".join(f"{name} {t.accuracy(1):.1f}"
                                     for name, t in result.top.items()) + f", {rate:.1f} img/s")
    return result


class UnreadableImage(ValueError):
    """An image file that cannot be decoded. A DataLoader worker re-raises it built from its
    whole traceback text; its message is then that text's last line, the one naming the file."""

    def __str__(self) -> str:
        lines = str(self.args[0]).strip().splitlines() if self.args else [""]
        name = type(self).__name__
        return lines[-1].partition(f"{name}: ")[2] if f"{name}: " in lines[-1] else lines[-1]


def read_image(path: str):
    """An image file as RGB (torchvision's loader), naming the file when it cannot be read:
    PIL's own errors (e.g. "image file is truncated") do not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{path}: cannot read this image ({err}); replace or remove "
                              "the file") from None


def image_folder(root: str | Path, img_size: int, num_classes: int, limit: int | None = None,
                 seed: int = 0, transform=None):
    """An ImageFolder (class subfolders, sorted = label index), by default with timm's eval
    transform; `limit` keeps a seeded random subset of that many images."""
    from torchvision.datasets import ImageFolder

    from .ptq import eval_transform

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder; pass an ImageFolder root (one "
                                "subfolder of images per class)")
    transform = transform or eval_transform(img_size)
    try:
        dataset = ImageFolder(str(root), transform=transform, allow_empty=True,
                              loader=read_image)
    except FileNotFoundError as err:
        raise ValueError(f"{root}: not an ImageFolder ({err})") from None
    if len(dataset.classes) != num_classes:
        raise ValueError(f"{root}: {len(dataset.classes)} class subfolders, but the model has "
                         f"{num_classes} classes; the sorted subfolder names give the label "
                         "indices, so every class needs its subfolder (it may be empty)")
    if len(dataset) == 0:
        raise ValueError(f"{root}: its class subfolders hold no images")
    if limit is not None and limit < len(dataset):
        indices = random.Random(seed).sample(range(len(dataset)), limit)
        dataset = torch.utils.data.Subset(dataset, sorted(indices))
    return dataset


def loader(dataset, batch_size: int, workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       num_workers=workers)


def tensor_batches(images: torch.Tensor, labels: torch.Tensor | np.ndarray, batch_size: int):
    """(images, labels) in order, `batch_size` at a time, from preprocessed tensors."""
    labels = torch.as_tensor(labels)
    for start in range(0, len(labels), batch_size):
        yield images[start:start + batch_size], labels[start:start + batch_size]


__all__ = [
    "EvalResult", "TopK", "artifact_predictor", "build_fp_model", "evaluate",
    "fp_model_from_quantized", "fp_predictor", "image_folder", "load_fp_model",
    "load_timm_state", "loader", "read_image",
    "reference_predictor", "tensor_batches",
]
