"""I-ViT quantization-aware training: fine-tune a quantized model through its fake-quant path.

The forward is the fake-quant one (`model(images)`): every value is an integer times its scale
and gradients pass straight through each rounding (STE, `quant.modules`). The activation
ranges keep tracking by EMA while training, as in I-ViT; at the end of every epoch the scales
are frozen, the integer buffers refreshed at those scales, and the model is scored with the
exact integer path (`forward_integer`), so the accuracy kept is the deployed one. The best
epoch (the starting point counts as epoch 0) is the result, saved atomically in I-ViT's format.

Optional knowledge distillation from a float teacher (Hinton et al.): the loss adds
T^2 * KL(softmax(teacher / T) || softmax(student / T)).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .checkpoint import save_checkpoint
from .quant import set_calibration

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (images (B, C, H, W), labels (B,))


@dataclass(frozen=True)
class QATSettings:
    """One QAT run: AdamW with a cosine-decayed learning rate over all steps."""

    epochs: int = 3
    lr: float = 1e-5
    weight_decay: float = 0.05
    distill_weight: float = 0.0  # share of the distillation loss (needs a teacher)
    distill_temperature: float = 2.0
    max_grad_norm: float | None = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"QAT needs at least one epoch (got {self.epochs})")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must lie in [0, 1] (got {self.distill_weight})")


@dataclass
class QATResult:
    """Integer top-1 after every epoch (index 0: the starting model) and the best epoch."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_top1: float = 0.0
    seconds: float = 0.0

    @property
    def start_top1(self) -> float:
        return self.history[0]["int_top1"]

    @property
    def steps_per_s(self) -> float | None:
        """Mean training steps per second over the epochs run (None before any)."""
        rates = [h["steps_per_s"] for h in self.history if "steps_per_s" in h]
        return sum(rates) / len(rates) if rates else None


def train_mode(model: nn.Module) -> None:
    """Fake-quant training: gradients on, activation ranges tracking from the stored scales."""
    model.train()
    set_calibration(model, True)


@torch.no_grad()
def freeze(model: nn.Module, images: torch.Tensor) -> None:
    """Freeze the scales, then one fake-quant forward at them refreshes every integer buffer
    (weight_integer, bias_integer) from the current weights, as `ptq.calibrate` does."""
    set_calibration(model, False)
    model.eval()
    model(images[:1])  # the buffers depend on weights and scales only, not on the images


@torch.no_grad()
def integer_top1(model: nn.Module, batches: Batches) -> float:
    """Top-1 accuracy (percent) of the exact integer path."""
    hits = count = 0
    for images, labels in batches:
        q_logits, _ = model.forward_integer(images)  # (B, K) int32
        hits += int((q_logits.argmax(1) == labels).sum())
        count += len(labels)
    if count == 0:
        raise ValueError("no evaluation images: the validation set is empty")
    return 100.0 * hits / count


def qat_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None,
             settings: QATSettings) -> torch.Tensor:
    loss = F.cross_entropy(logits, labels)
    if teacher_logits is None or settings.distill_weight == 0:
        return loss
    t = settings.distill_temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True) * t * t
    return (1 - settings.distill_weight) * loss + settings.distill_weight * kl


def finetune(model: nn.Module, train: Batches, val: Batches, settings: QATSettings,
             teacher: nn.Module | None = None, out: str | Path | None = None,
             metadata_extra: dict | None = None, progress: bool = True,
             log: Callable[[str], None] = print) -> QATResult:
    """QAT of a calibrated model (from `ptq.calibrate` or `load_checkpoint`) in place.

    `train` and `val` are re-iterable, sized (DataLoaders, lists) of (images, labels). After
    the call the model holds the best epoch's weights and scales, frozen; with `out`, every new
    best is written there as an I-ViT checkpoint (QAT history in its metadata).
    """
    if settings.distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a float teacher model")
    torch.manual_seed(settings.seed)
    start = time.perf_counter()
    first = next(iter(val), None)
    if first is None:
        raise ValueError("no evaluation images: the validation set is empty")
    refresh_images = first[0]  # (B, C, H, W): the forward that refreshes integer buffers
    freeze(model, refresh_images)
    result = QATResult()
    _record(result, 0, None, integer_top1(model, val), log)
    best_state = copy.deepcopy(model.state_dict())
    if out is not None:
        _save(model, out, result, settings, metadata_extra)

    steps = settings.epochs * len(train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))
    if teacher is not None:
        teacher.eval()
    for epoch in range(1, settings.epochs + 1):
        train_mode(model)
        bar = tqdm(train, desc=f"QAT epoch {epoch}/{settings.epochs}", unit="batch",
                   disable=not progress, leave=False)
        total_loss = batches = images_seen = 0
        epoch_start = time.perf_counter()
        for images, labels in bar:
            teacher_logits = None
            if teacher is not None and settings.distill_weight > 0:
                with torch.no_grad():
                    teacher_logits = teacher(images)
            loss = qat_loss(model(images), labels, teacher_logits, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            schedule.step()
            total_loss += loss.item()
            batches += 1
            images_seen += len(labels)
            rate = images_seen / max(time.perf_counter() - epoch_start, 1e-9)
            bar.set_postfix_str(f"loss {total_loss / batches:.4f}, {rate:.1f} img/s")
        speed = _speed(batches, images_seen, time.perf_counter() - epoch_start)
        freeze(model, refresh_images)
        top1 = integer_top1(model, val)
        _record(result, epoch, total_loss / max(batches, 1), top1, log, speed)
        if top1 > result.best_top1:
            result.best_epoch, result.best_top1 = epoch, top1
            best_state = copy.deepcopy(model.state_dict())
            if out is not None:
                _save(model, out, result, settings, metadata_extra)
    _load_state(model, best_state)
    result.seconds = round(time.perf_counter() - start, 1)
    return result


def _speed(steps: int, images: int, seconds: float) -> dict[str, float]:
    """Training throughput of one epoch (forward, backward and optimizer step)."""
    seconds = max(seconds, 1e-9)
    return {"steps_per_s": round(steps / seconds, 3), "images_per_s": round(images / seconds, 2)}


def _record(result: QATResult, epoch: int, loss: float | None, top1: float,
            log: Callable[[str], None], speed: dict[str, float] | None = None) -> None:
    result.history.append({"epoch": epoch, "train_loss": loss, "int_top1": round(top1, 3),
                           **(speed or {})})
    if epoch == 0:
        result.best_top1 = top1
        log(f"start: integer top-1 {top1:.2f}%")
    else:
        rate = (f" ({speed['steps_per_s']:.2f} steps/s, {speed['images_per_s']:.1f} img/s)"
                if speed else "")
        log(f"epoch {epoch}: loss {loss:.4f}, integer top-1 {top1:.2f}%{rate}")


def _save(model: nn.Module, out: str | Path, result: QATResult, settings: QATSettings,
          metadata_extra: dict | None) -> None:
    meta = dict(metadata_extra or {})
    meta["qat"] = {"settings": asdict(settings), "history": result.history,
                   "best_epoch": result.best_epoch, "best_int_top1": round(result.best_top1, 3)}
    save_checkpoint(model, out, metadata_extra=meta)


def _load_state(model: nn.Module, state: dict) -> None:
    """Put a saved state back, including buffers whose shape a forward changed."""
    for name, buffer in model.named_buffers():
        if buffer.shape != state[name].shape:
            module_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module_name), attr, state[name].clone())
    model.load_state_dict(state)
    set_calibration(model, False)
    model.eval()


__all__ = ["QATResult", "QATSettings", "finetune", "freeze", "integer_top1", "qat_loss",
           "train_mode"]
