"""The training loop: one optimizer step = one schedule step; metrics flushed every N steps."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import InMemoryData
from .schedules import ScheduleLR
from .step_buffer import StepBuffer
from .tb import RunWriter


@dataclass
class TrainResult:
    """What a run ends with; ``status`` is completed, diverged or interrupted."""

    status: str = "running"
    steps: int = 0
    diverged_step: int | None = None
    final_train_loss: float | None = None
    last_train_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    final_val_acc: float | None = None
    best_val_acc: float | None = None
    history: dict = field(default_factory=lambda: {"val": []})


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; language-model logits (B, T, V) are flattened over positions."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


class Trainer:
    """Trains ``model`` for ``total_steps`` optimizer steps.

    Logged to TensorBoard: ``train/loss``, ``train/lr`` (``train/lr/<group>`` when the groups'
    lrs differ) and ``train/grad_norm`` (before clipping) at every step; ``val/loss`` and
    ``val/acc`` every ``eval_interval`` steps and at the end. Nothing in the step reads a
    device value on the host except at the ``log_interval`` flush.
    """

    def __init__(self, model, optimizer, schedule, data: InMemoryData, writer: RunWriter, *,
                 total_steps: int, batch_size: int, seed: int, device: torch.device,
                 eval_interval: int, log_interval: int, grad_clip: float | None = None,
                 precision: str = "fp32", progress: bool = True, eval_batch_size: int = 512):
        self.model, self.optimizer, self.data, self.writer = model, optimizer, data, writer
        self.schedule = schedule
        self.lr_adapter = ScheduleLR(optimizer, schedule)
        self.sampler = data.sampler(batch_size, seed)
        self.total_steps, self.device = total_steps, device
        self.eval_interval, self.log_interval = eval_interval, log_interval
        self.grad_clip, self.progress, self.eval_batch_size = grad_clip, progress, eval_batch_size
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if precision == "bf16" else nullcontext())
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffer = StepBuffer(("loss", "grad_norm"), log_interval, device)
        self.lrs: list[list[float]] = []
        self.step = 0
        self.stop_requested = False
        self.result = TrainResult()

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> None:
        self.model.train()
        x, y = self.data.batch(self.sampler.next(), self.sampler.generator)
        with self.autocast:
            loss = loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, grad_norm)
        self.lrs.append(self.lr_adapter.get_last_lr())  # the lrs this update uses
        self.optimizer.step()
        self.lr_adapter.step()
        self.buffer.put(self.step, loss=loss.detach(), grad_norm=grad_norm)
        self.step += 1

    # -- logging --------------------------------------------------------------------------
    def flush(self, bar=None) -> None:
        """Copy buffered metrics to the host, log them, and stop at the first NaN/inf loss."""
        if not len(self.buffer):
            return
        steps, cols = self.buffer.drain()
        lrs, self.lrs = self.lrs, []
        names = [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]
        for i, step in enumerate(steps):
            loss = cols["loss"][i]
            self.writer.scalar("train/loss", loss, step)
            self.writer.scalar("train/grad_norm", cols["grad_norm"][i], step)
            self.writer.scalar("train/lr", lrs[i][0], step)
            if len(set(lrs[i])) > 1:
                for name, lr in zip(names, lrs[i]):
                    self.writer.scalar(f"train/lr/{name}", lr, step)
            if not math.isfinite(loss):
                self.result.status, self.result.diverged_step = "diverged", step
                break
            self.result.last_train_loss = loss
        finite = [v for v in cols["loss"] if math.isfinite(v)]
        if finite:
            self.result.final_train_loss = sum(finite) / len(finite)
        if bar is not None:
            bar.update(steps[-1] + 1 - bar.n)
            bar.set_postfix(loss=f"{cols['loss'][-1]:.4f}", lr=f"{lrs[-1][0]:.3g}", refresh=False)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Mean loss and accuracy (next-token accuracy for language models) on the val split."""
        self.model.eval()
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        count = 0
        for x, y in self.data.val_batches(self.eval_batch_size):
            with self.autocast:
                logits = self.model(x)
            logits = logits.float().reshape(-1, logits.shape[-1])
            target = y.reshape(-1)
            total_loss += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(-1) == target).sum()
            count += target.numel()
        loss, acc = (total_loss / count).item(), (correct / count).item()
        self.writer.scalar("val/loss", loss, self.step)
        self.writer.scalar("val/acc", acc, self.step)
        if self.data.spec.is_lm:
            self.writer.scalar("val/bits_per_byte", loss / math.log(2), self.step)
        r = self.result
        r.final_val_loss, r.final_val_acc = loss, acc
        if math.isfinite(loss) and (r.best_val_loss is None or loss < r.best_val_loss):
            r.best_val_loss = loss
        if r.best_val_acc is None or acc > r.best_val_acc:
            r.best_val_acc = acc
        r.history["val"].append({"step": self.step, "loss": loss, "acc": acc})
        return loss, acc

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                   desc="train", unit="step", dynamic_ncols=True, mininterval=0.5)
        try:
            while self.step < self.total_steps and self.result.status == "running":
                self.train_step()
                if self.buffer.full or self.step == self.total_steps or self.stop_requested:
                    self.flush(bar)
                if self.result.status != "running":
                    break
                if self.stop_requested:
                    self.result.status = "interrupted"
                    break
                if self.step % self.eval_interval == 0 and self.step < self.total_steps:
                    self.evaluate()
        finally:
            bar.close()
        if self.result.status == "running":
            self.evaluate()
            self.result.status = "completed"
        elif self.result.status == "diverged":
            self.writer.scalar("train/diverged_at", float(self.result.diverged_step), self.result.diverged_step)
        self.result.steps = self.step
        return self.result
