"""The training loop: one optimizer step = one schedule step; metrics flushed every N steps."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from warmup_lab.runs.checkpoint import rng_state, set_rng_state
from warmup_lab.data import InMemoryData
from warmup_lab.metrics.jitter import JitterTracker, MetricsConfig
from warmup_lab.engine.fastpath import total_norm
from warmup_lab.schedules import ScheduleLR
from warmup_lab.engine.step_buffer import StepBuffer
from warmup_lab.runs.tb import RunWriter


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
    lrs differ), ``train/grad_norm`` (before clipping), ``train/update_ratio`` and the
    ``jitter/*`` loss-window metrics at every step; per-layer ``layer/*`` and Adam's
    ``train/adam/*`` every ``metrics.layer_interval`` steps (docs/metrics.md); ``val/loss`` and
    ``val/acc`` every ``eval_interval`` steps and at the end. Nothing in the step reads a
    device value on the host except at the ``log_interval`` flush.
    """

    def __init__(self, model, optimizer, schedule, data: InMemoryData, writer: RunWriter, *,
                 total_steps: int, batch_size: int, seed: int, device: torch.device,
                 eval_interval: int, log_interval: int, grad_clip: float | None = None,
                 precision: str = "fp32", progress: bool = True, eval_batch_size: int = 512,
                 metrics: dict | None = None, checkpoint_interval: int | None = None,
                 checkpoint_fn: Callable[[dict], object] | None = None):
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
        # stability metrics (jitter.py, docs/metrics.md): update ratio per step, loss-window
        # columns filled for a whole block at the flush, per-layer/Adam every layer_interval
        self.tracker = JitterTracker([(n, p) for n, p in model.named_parameters() if p.requires_grad],
                                     optimizer, MetricsConfig.from_dict(metrics, log_interval),
                                     total_steps)
        self.buffer = StepBuffer(("loss", "grad_norm", "update_ratio", "loss_std", "loss_abs_change",
                                  "spike_ratio", "spike_count"), log_interval, device)
        mcfg = self.tracker.cfg
        self.curvature = None  # sharpness every curvature_interval steps (curvature.py)
        self.curvature_rows: list[tuple[int, dict]] = []
        if mcfg.curvature_interval:
            from warmup_lab.metrics.curvature import CurvatureProbe

            self.curvature = CurvatureProbe(model, optimizer, type(optimizer).__name__.lower(), data, loss_fn,
                                            seed=seed, interval=mcfg.curvature_interval, iters=mcfg.curvature_iters,
                                            batch_size=mcfg.curvature_batch or batch_size, device=device)
        self.lrs: list[list[float]] = []
        self.step = 0
        self.stop_requested = False
        self.result = TrainResult()
        # checkpoints (checkpoint.py): every checkpoint_interval steps, at the end, on a stop
        # request, and after the step in which checkpoint_requested was set (a signal)
        self.checkpoint_interval, self.checkpoint_fn = checkpoint_interval, checkpoint_fn
        self.checkpoint_requested = False

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> None:
        if not self.model.training:  # only evaluate() switches it off; train() walks every module
            self.model.train()
        if self.curvature is not None and self.curvature.due(self.step):  # at the parameters of this step
            self.curvature.measure(self.step, self.lr_adapter.get_last_lr()[0])
        x, y = self.data.batch(self.sampler.next(), self.sampler.generator)
        with self.autocast:
            loss = loss_fn(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = total_norm(grads)
        self.tracker.before_step(self.step)  # parameter copy; per-layer grad norms (pre-clip)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.grad_clip, grad_norm)
        self.lrs.append(self.lr_adapter.get_last_lr())  # the lrs this update uses
        self.optimizer.step()
        update_ratio = self.tracker.after_step(self.step)
        self.lr_adapter.step()
        extra = {} if update_ratio is None else {"update_ratio": update_ratio}
        self.buffer.put(self.step, loss=loss.detach(), grad_norm=grad_norm, **extra)
        self.step += 1

    # -- logging --------------------------------------------------------------------------
    def flush(self, bar=None) -> None:
        """Copy buffered metrics to the host, log them, and stop at the first NaN/inf loss."""
        if not len(self.buffer):
            return
        self.buffer.set_columns(**self.tracker.block(self.buffer.column("loss")))  # on the device
        steps, cols = self.buffer.drain()
        layer_stats = dict(self.tracker.pending_layer_stats())
        lrs, self.lrs = self.lrs, []
        names = [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]
        jitter_cols = ("loss_std", "loss_abs_change", "spike_ratio", "spike_count")
        done = len(steps)
        for i, step in enumerate(steps):
            loss = cols["loss"][i]
            values = {"train/loss": loss, "train/grad_norm": cols["grad_norm"][i],
                      "train/lr": lrs[i][0]}
            if self.tracker.tracks_update:
                values["train/update_ratio"] = cols["update_ratio"][i]
            values.update({f"jitter/{c}": cols[c][i] for c in jitter_cols})
            if len(set(lrs[i])) > 1:
                values.update({f"train/lr/{name}": lr for name, lr in zip(names, lrs[i])})
            values.update(layer_stats.get(step, {}))
            self.writer.scalars(values, step)
            if not math.isfinite(loss):
                self.result.status, self.result.diverged_step = "diverged", step
                done = i + 1
                break
            self.result.last_train_loss = loss
        if self.curvature is not None:
            for step, row in self.curvature.drain():
                if self.result.status != "diverged" or step <= self.result.diverged_step:
                    self.writer.scalars(row, step)
                    self.curvature_rows.append((step, row))
        self.tracker.record({k: v[:done] for k, v in cols.items()})
        finite = [v for v in cols["loss"] if math.isfinite(v)]
        if finite:
            self.result.final_train_loss = sum(finite) / len(finite)
        if bar is not None:
            bar.update(steps[-1] + 1 - bar.n)
            bar.set_postfix(loss=f"{cols['loss'][-1]:.4f}", lr=f"{lrs[-1][0]:.3g}", refresh=False)

    def stability_summary(self) -> dict:
        """Run-level jitter numbers for ``metrics.json`` (docs/metrics.md)."""
        spec = self.data.spec
        out = self.tracker.summary(chance_acc=None if spec.is_lm else 1.0 / spec.num_classes)
        if self.curvature is not None:
            from warmup_lab.metrics.curvature import summary

            early = math.ceil(self.tracker.cfg.early_fraction * self.total_steps)
            out.update(summary(self.curvature_rows, early, getattr(self.schedule, "warmup_steps", 0) or 0))
        return out

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
        self.log_val(loss, acc, self.step)
        r = self.result
        r.final_val_loss, r.final_val_acc = loss, acc
        if math.isfinite(loss) and (r.best_val_loss is None or loss < r.best_val_loss):
            r.best_val_loss = loss
        if r.best_val_acc is None or acc > r.best_val_acc:
            r.best_val_acc = acc
        r.history["val"].append({"step": self.step, "loss": loss, "acc": acc})
        self._follow_val_history()
        return loss, acc

    def _follow_val_history(self) -> None:
        """A schedule driven by the validation history (reduce on plateau) gets the evaluations so
        far; the lr of the next update follows. Nothing for a function of the step alone."""
        if getattr(self.schedule, "needs_val_history", False):
            self.schedule = self.schedule.with_val_history(self.result.history["val"])
            self.lr_adapter.follow(self.schedule)

    def log_val(self, loss: float, acc: float, step: int) -> None:
        self.writer.scalar("val/loss", loss, step)
        self.writer.scalar("val/acc", acc, step)
        if self.data.spec.is_lm:
            self.writer.scalar("val/bits_per_byte", loss / math.log(2), step)

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train from ``self.step`` (0, or a loaded checkpoint's) to ``total_steps``.

        ``stop_requested`` (a signal) ends the loop after the current step and the evaluation
        due at it: the checkpoint is saved before the pending steps are flushed, so a resumed
        run flushes (and logs) them again at the same boundaries as an uninterrupted one."""
        bar = None
        if self.progress:  # imported here: 50 ms of start-up that batch runs do not need
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                       dynamic_ncols=True, mininterval=0.5)
        try:
            while self.step < self.total_steps and self.result.status == "running":
                self.train_step()
                if self.buffer.full or self.step == self.total_steps:
                    self.flush(bar)
                if self.result.status != "running":
                    break
                if self.step % self.eval_interval == 0 and self.step < self.total_steps:
                    self.evaluate()
                if self.stop_requested and self.step < self.total_steps:
                    self.result.status = "interrupted"
                    break
                if self.checkpoint_requested or (self.checkpoint_interval and self.step < self.total_steps
                                                 and self.step % self.checkpoint_interval == 0):
                    self.checkpoint_requested = False
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if self.result.status == "interrupted":
            self.save_checkpoint()
            self.flush()  # the logs up to this step (a NaN among them still ends the run diverged)
        if self.result.status == "running":
            self.evaluate()
            self.result.status = "completed"
        elif self.result.status == "diverged":
            self.writer.scalar("train/diverged_at", float(self.result.diverged_step), self.result.diverged_step)
        self.result.steps = self.step
        if self.result.status != "interrupted":
            self.save_checkpoint()
        return self.result

    # -- checkpoint / resume --------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Hand :meth:`state_dict` to ``checkpoint_fn``, after the TensorBoard events written so
        far are on disk (a resume discards events from the checkpoint's ``purge_step`` on, so
        every earlier step must already be in the files)."""
        if self.checkpoint_fn is None:
            return
        self.writer.flush()
        self.checkpoint_fn(self.state_dict())

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: model, optimizer, schedule step, data order,
        all RNG states, the result so far, the jitter tracker and the buffered steps not yet
        flushed (``purge_step`` is the first of them). Tensors and plain types only, so the
        checkpoint loads with ``weights_only=True``."""
        buffer = self.buffer.state_dict()
        return {"step": self.step, "purge_step": buffer["steps"][0] if buffer["steps"] else self.step,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_adapter": self.lr_adapter.state_dict(), "sampler": self.sampler.state_dict(),
                "buffer": buffer, "lrs": [list(lr) for lr in self.lrs], "tracker": self.tracker.state_dict(),
                "result": dataclasses.asdict(self.result), "rng": rng_state(),
                **({"curvature": {**self.curvature.state_dict(), "rows": [[s, r] for s, r in self.curvature_rows]}}
                   if self.curvature is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict`); the global RNGs are restored last."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_adapter.load_state_dict(state["lr_adapter"])
        self.sampler.load_state_dict(state["sampler"])
        self.buffer.load_state_dict(state["buffer"])
        self.lrs = [list(lr) for lr in state["lrs"]]
        self.tracker.load_state_dict(state["tracker"])
        self.step = int(state["step"])
        if self.curvature is not None and "curvature" in state:
            self.curvature.load_state_dict(state["curvature"])
            self.curvature_rows = [(int(s), dict(r)) for s, r in state["curvature"]["rows"]]
        self.result = TrainResult(**state["result"])
        if self.result.status == "interrupted":
            self.result.status = "running"
        self._follow_val_history()  # the schedule is rebuilt from the history the checkpoint holds
        set_rng_state(state["rng"])

    def relog_val(self, from_step: int) -> None:
        """Log again the evaluations at ``from_step`` or later (a resumed run's writer purges
        every event from its checkpoint's ``purge_step`` on, evaluations done before it included)."""
        for entry in self.result.history["val"]:
            if entry["step"] >= from_step:
                self.log_val(entry["loss"], entry["acc"], entry["step"])
