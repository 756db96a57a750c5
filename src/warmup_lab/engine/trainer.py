"""The training loop for K >= 1 runs: one optimizer step per run = one schedule step; metrics
flushed every N steps. A run alone is K = 1 of the same loop.

Each run keeps its own seed (initialisation, data order), model, torch optimizer, schedule,
result, TensorBoard writer and metrics; the K models train through one forward and one backward
(:mod:`warmup_lab.engine.stacking`). A run whose loss turns non-finite is recorded ``diverged`` at
that step and masked out (no more updates, logs or evaluations); the others go on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from warmup_lab.data import InMemoryData
from warmup_lab.engine.fastpath import total_norm
from warmup_lab.engine.stacking import load_models_state, models_state, stack_models
from warmup_lab.engine.step_buffer import StepBuffer, read_back
from warmup_lab.metrics.loss_windows import JITTER_COLUMNS, JITTER_TAGS, LossWindows, MetricsConfig
from warmup_lab.metrics.optimizer_telemetry import OptimizerTelemetry
from warmup_lab.runs.checkpoint import rng_state, set_rng_state
from warmup_lab.runs.tb import RunWriter
from warmup_lab.schedules import ScheduleLR

COLUMNS = ("loss", "grad_norm", "update_ratio")


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


def run_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(K,)`` per-run mean cross-entropy of logits ``(K, B, ..., V)``; for K = 1 exactly
    :func:`loss_fn` of the run alone."""
    if logits.shape[0] == 1:
        return loss_fn(logits[0], targets[0]).reshape(1)
    k = logits.shape[0]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           reduction="none").view(k, -1).mean(1)


@dataclass
class RunParts:
    """What one run brings to a :class:`Trainer`: its built model and optimizer (on the device),
    schedule, TensorBoard writer and seed (its data order)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    schedule: object
    writer: RunWriter
    seed: int


class Run:
    """One run inside a trainer: its parts plus its sampler, lr adapter, metrics and result."""

    def __init__(self, index: int, parts: RunParts, data: InMemoryData, batch_size: int,
                 mcfg: MetricsConfig, total_steps: int, device: torch.device):
        self.index = index
        self.model, self.optimizer, self.writer = parts.model, parts.optimizer, parts.writer
        self.schedule, self.seed = parts.schedule, parts.seed
        self.lr_adapter = ScheduleLR(self.optimizer, self.schedule)
        self.sampler = data.sampler(batch_size, self.seed)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.telemetry = OptimizerTelemetry(named, self.optimizer, mcfg)
        self.params = self.telemetry.params
        self.windows = LossWindows(mcfg, total_steps, device)
        self.result = TrainResult()
        self.lrs: list[list[float]] = []     # the lrs of the buffered steps (host numbers)
        self.curvature = None                # sharpness every curvature_interval steps (curvature.py)
        if mcfg.curvature_interval:
            from warmup_lab.metrics.curvature import CurvatureProbe

            self.curvature = CurvatureProbe(
                self.model, self.optimizer, type(self.optimizer).__name__.lower(), data, loss_fn, seed=self.seed,
                interval=mcfg.curvature_interval, iters=mcfg.curvature_iters,
                batch_size=mcfg.curvature_batch or batch_size, device=device)
        self.curvature_rows: list[tuple[int, dict]] = []

    @property
    def group_names(self) -> list[str]:
        return [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]

    def follow_val_history(self) -> None:
        """A schedule driven by the validation history (reduce on plateau) gets the evaluations so
        far; the lr of the next update follows. Nothing for a function of the step alone."""
        if getattr(self.schedule, "needs_val_history", False):
            self.schedule = self.schedule.with_val_history(self.result.history["val"])
            self.lr_adapter.follow(self.schedule)

    def log_val(self, loss: float, acc: float, step: int, is_lm: bool) -> None:
        self.writer.scalar("val/loss", loss, step)
        self.writer.scalar("val/acc", acc, step)
        if is_lm:
            self.writer.scalar("val/bits_per_byte", loss / math.log(2), step)

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "lr_adapter": self.lr_adapter.state_dict(),
                "sampler": self.sampler.state_dict(), "lrs": [list(lr) for lr in self.lrs],
                "windows": self.windows.state_dict(), "telemetry": self.telemetry.state_dict(),
                "result": dataclasses.asdict(self.result),
                **({"curvature": {**self.curvature.state_dict(), "rows": [[s, r] for s, r in self.curvature_rows]}}
                   if self.curvature is not None else {})}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_adapter.load_state_dict(state["lr_adapter"])
        self.sampler.load_state_dict(state["sampler"])
        self.lrs = [list(lr) for lr in state["lrs"]]
        self.windows.load_state_dict(state["windows"])
        self.telemetry.load_state_dict(state["telemetry"])
        if self.curvature is not None and "curvature" in state:
            self.curvature.load_state_dict(state["curvature"])
            self.curvature_rows = [(int(s), dict(r)) for s, r in state["curvature"]["rows"]]
        self.result = TrainResult(**state["result"])
        if self.result.status == "interrupted":
            self.result.status = "running"
        self.follow_val_history()  # the schedule is rebuilt from the history the checkpoint holds


class Trainer:
    """Trains K runs for ``total_steps`` optimizer steps each.

    Logged per run to TensorBoard: ``train/loss``, ``train/lr`` (``train/lr/<group>`` when the
    groups' lrs differ), ``train/grad_norm`` (before clipping), ``train/update_ratio`` and the
    ``jitter/*`` loss-window metrics at every step; per-layer ``layer/*`` and Adam's
    ``train/adam/*`` every ``metrics.layer_interval`` steps (docs/metrics.md); ``val/loss`` and
    ``val/acc`` every ``eval_interval`` steps and at the end. Nothing in the step reads a
    device value on the host except at the ``log_interval`` flush.
    """

    def __init__(self, parts: list[RunParts], data: InMemoryData, *, total_steps: int, batch_size: int,
                 device: torch.device, eval_interval: int, log_interval: int, grad_clip: float | None = None,
                 precision: str = "fp32", progress: bool = True, eval_batch_size: int = 512,
                 metrics: dict | None = None, checkpoint_interval: int | None = None,
                 checkpoint_fn: Callable[[dict], object] | None = None, channels_last: bool = False,
                 compile: bool = False, stack: str = "auto"):
        self.data, self.total_steps, self.device = data, total_steps, device
        self.eval_interval, self.log_interval = eval_interval, log_interval
        self.grad_clip, self.progress, self.eval_batch_size = grad_clip, progress, eval_batch_size
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if precision == "bf16" else nullcontext())
        self.mcfg = MetricsConfig.from_dict(metrics, log_interval)
        self.runs = [Run(k, p, data, batch_size, self.mcfg, total_steps, device) for k, p in enumerate(parts)]
        self.k = len(self.runs)
        self.stack = stack_models([r.model for r in self.runs], stack, channels_last=channels_last)
        self.forward = torch.compile(self.stack) if compile and self.k > 1 else self.stack
        self.optimizers = [r.optimizer for r in self.runs]
        self._set_active()
        self.buffer = StepBuffer(COLUMNS, log_interval, device, self.k)
        self.step = 0
        self.stop_requested = False
        # checkpoints (checkpoint.py): every checkpoint_interval steps, at the end, on a stop
        # request, and after the step in which checkpoint_requested was set (a signal)
        self.checkpoint_interval, self.checkpoint_fn = checkpoint_interval, checkpoint_fn
        self.checkpoint_requested = False

    def _set_active(self) -> None:
        """The runs still training (not diverged) and, once some are not, their indices on the
        device (where the step buffer writes their values)."""
        self.active = [r for r in self.runs if r.result.status == "running"]
        self._active_idx = (None if len(self.active) == self.k else
                            torch.tensor([r.index for r in self.active], device=self.device))

    # -- one step -------------------------------------------------------------------------
    def batches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every run's next batch from its own sampler, stacked: ``(K, B, ...)``."""
        pairs = [self.data.batch(r.sampler.next(), r.sampler.generator) for r in self.runs]
        if self.k == 1:
            return pairs[0][0].unsqueeze(0), pairs[0][1].unsqueeze(0)
        return torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])

    def train_step(self) -> None:
        if not self.stack.training:  # only evaluate() switches it off; train() walks every module
            self.stack.train()
        step = self.step
        for r in self.active:
            if r.curvature is not None and r.curvature.due(step):  # at the parameters of this step
                r.curvature.measure(step, r.lr_adapter.get_last_lr()[0])
        xs, ys = self.batches()
        with self.autocast:
            losses = run_losses(self.forward(xs), ys)
        self.stack.zero_grad_(self.optimizers)
        losses.sum().backward()
        self.stack.check_grads()
        norms, ratios = [], []
        for r in self.active:
            grad_norm = total_norm([p.grad for p in r.params if p.grad is not None])
            r.telemetry.before_step(step)  # parameter copy; per-layer grad norms (pre-clip)
            if self.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(r.params, self.grad_clip, grad_norm)
            r.lrs.append(r.lr_adapter.get_last_lr())  # the lrs this update uses
            r.optimizer.step()
            ratios.append(r.telemetry.after_step(step))
            r.lr_adapter.step()
            norms.append(grad_norm)
        extra = {} if ratios[0] is None else {"update_ratio": ratios}
        self.buffer.put(step, self._active_idx, loss=losses.detach(), grad_norm=norms, **extra)
        self.step += 1

    # -- logging --------------------------------------------------------------------------
    def flush(self, bar=None) -> None:
        """Copy the buffered block, each run's loss windows and queued per-layer values to the
        host in one transfer, log them, and end a run at its first NaN/inf loss."""
        n = len(self.buffer)
        if not n:
            return
        jitter = [torch.stack(list(r.windows.block(self.buffer.column("loss", r.index)).values()))
                  for r in self.active]  # (4, n) per run, on the device
        layers = [r.telemetry.take_layer_stats() for r in self.active]
        flat_layers = [v.reshape(()) for queue in layers for _, stats in queue for v in stats.values()]
        host = read_back([self.buffer.block(), *jitter] + ([torch.stack(flat_layers)] if flat_layers else []))
        steps = self.buffer.clear()
        block = host[0]                       # (n, columns, K) row-major
        c, k = len(COLUMNS), self.k
        layer_values = iter(host[-1]) if flat_layers else iter(())
        for r, jit, queue in zip(self.active, host[1:1 + len(jitter)], layers):
            cols = {name: block[j * k + r.index::c * k] for j, name in enumerate(COLUMNS)}  # its values of column j
            cols.update({name: jit[j * n:(j + 1) * n] for j, name in enumerate(JITTER_COLUMNS)})
            layer_stats = {step: {tag: next(layer_values) for tag in stats} for step, stats in queue}
            self._log_block(r, steps, cols, layer_stats)
        self._set_active()
        if bar is not None:
            first = self.runs[0]
            bar.update(steps[-1] + 1 - bar.n)
            if first.result.last_train_loss is not None:
                bar.set_postfix(loss=f"{first.result.last_train_loss:.4f}",
                                lr=f"{first.lr_adapter.get_last_lr()[0]:.3g}", refresh=False)

    def _log_block(self, r: Run, steps: list[int], cols: dict[str, list[float]], layer_stats: dict) -> None:
        """One run's flushed block: TensorBoard, divergence, loss windows, result."""
        lrs, r.lrs = r.lrs, []
        names = r.group_names
        tracks_update = r.telemetry.tracks_update
        done = len(steps)
        for i, step in enumerate(steps):
            loss = cols["loss"][i]
            values = {"train/loss": loss, "train/grad_norm": cols["grad_norm"][i], "train/lr": lrs[i][0]}
            if tracks_update:
                values["train/update_ratio"] = cols["update_ratio"][i]
            values.update(zip(JITTER_TAGS, (cols[c][i] for c in JITTER_COLUMNS)))
            if len(set(lrs[i])) > 1:
                values.update({f"train/lr/{name}": lr for name, lr in zip(names, lrs[i])})
            values.update(layer_stats.get(step, {}))
            r.writer.scalars(values, step)
            if not math.isfinite(loss):
                r.result.status, r.result.diverged_step, r.result.steps = "diverged", step, self.step
                r.writer.scalar("train/diverged_at", float(step), step)
                done = i + 1
                break
            r.result.last_train_loss = loss
        if r.curvature is not None:
            for step, row in r.curvature.drain():
                if r.result.status != "diverged" or step <= r.result.diverged_step:
                    r.writer.scalars(row, step)
                    r.curvature_rows.append((step, row))
        r.windows.record({key: v[:done] for key, v in cols.items()})
        finite = [v for v in cols["loss"] if math.isfinite(v)]
        if finite:
            r.result.final_train_loss = sum(finite) / len(finite)

    def stability_summary(self, r: Run) -> dict:
        """Run-level jitter numbers for ``metrics.json`` (docs/metrics.md)."""
        spec = self.data.spec
        out = r.windows.summary(chance_acc=None if spec.is_lm else 1.0 / spec.num_classes)
        if r.curvature is not None:
            from warmup_lab.metrics.curvature import summary

            early = math.ceil(self.mcfg.early_fraction * self.total_steps)
            out.update(summary(r.curvature_rows, early, getattr(r.schedule, "warmup_steps", 0) or 0))
        return out

    @torch.no_grad()
    def evaluate(self) -> None:
        """Mean loss and accuracy (next-token accuracy for language models) of every training
        run on the val split, each summed as the run alone sums it."""
        self.stack.eval()
        total = torch.zeros(self.k, device=self.device)
        correct = torch.zeros(self.k, device=self.device)
        count = 0
        for x, y in self.data.val_batches(self.eval_batch_size):
            xs = x.unsqueeze(0) if self.k == 1 else x.expand(self.k, *x.shape)
            with self.autocast:
                logits = self.forward(xs)
            logits = logits.float()
            target = y.reshape(-1)
            for k in range(self.k):
                lk = logits[k].reshape(-1, logits.shape[-1])
                total[k] += F.cross_entropy(lk, target, reduction="sum")
                correct[k] += (lk.argmax(-1) == target).sum()
            count += target.numel()
        host = read_back([total / count, correct / count])
        for r in self.active:
            loss, acc = host[0][r.index], host[1][r.index]
            r.log_val(loss, acc, self.step, self.data.spec.is_lm)
            res = r.result
            res.final_val_loss, res.final_val_acc = loss, acc
            if math.isfinite(loss) and (res.best_val_loss is None or loss < res.best_val_loss):
                res.best_val_loss = loss
            if res.best_val_acc is None or acc > res.best_val_acc:
                res.best_val_acc = acc
            res.history["val"].append({"step": self.step, "loss": loss, "acc": acc})
            r.follow_val_history()

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> list[TrainResult]:
        """Train from ``self.step`` (0, or a loaded checkpoint's) to ``total_steps``.

        ``stop_requested`` (a signal) ends the loop after the current step and the evaluation
        due at it: the checkpoint is saved before the pending steps are flushed, so a resumed
        run flushes (and logs) them again at the same boundaries as an uninterrupted one."""
        bar = None
        if self.progress:  # imported here: 50 ms of start-up that batch runs do not need
            from tqdm.auto import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, unit="step", dynamic_ncols=True,
                       desc="train" if self.k == 1 else f"train x{self.k}", mininterval=0.5)
        interrupted = False
        try:
            while self.step < self.total_steps and self.active:
                self.train_step()
                if self.buffer.full or self.step == self.total_steps:
                    self.flush(bar)
                if not self.active:
                    break
                if self.step % self.eval_interval == 0 and self.step < self.total_steps:
                    self.evaluate()
                if self.stop_requested and self.step < self.total_steps:
                    interrupted = True
                    break
                if self.checkpoint_requested or (self.checkpoint_interval and self.step < self.total_steps
                                                 and self.step % self.checkpoint_interval == 0):
                    self.checkpoint_requested = False
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        if interrupted:
            self.save_checkpoint()
            running = len(self.active)
            self.flush()  # the logs up to this step (a NaN among them still ends that run diverged)
            if len(self.active) < running:
                self.save_checkpoint()  # that run resumes masked, as it ended
        elif self.active:
            self.evaluate()
        for r in self.active:
            r.result.status = "interrupted" if interrupted else "completed"
            r.result.steps = self.step
        if not interrupted:
            self.save_checkpoint()
        return [r.result for r in self.runs]

    # -- checkpoint / resume --------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Hand :meth:`state_dict` to ``checkpoint_fn``, after the TensorBoard events written so
        far are on disk (a resume discards events from the checkpoint's ``purge_step`` on, so
        every earlier step must already be in the files)."""
        if self.checkpoint_fn is None:
            return
        for r in self.runs:
            r.writer.flush()
        self.checkpoint_fn(self.state_dict())

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the K models, each run's optimizer, schedule
        step, data order, metrics and result, all RNG states and the buffered steps not yet
        flushed (``purge_step`` is the first of them). Tensors and plain types only, so the
        checkpoint loads with ``weights_only=True``."""
        buffer = self.buffer.state_dict()
        return {"step": self.step, "purge_step": buffer["steps"][0] if buffer["steps"] else self.step,
                "model": models_state([r.model for r in self.runs]), "buffer": buffer, "rng": rng_state(),
                "runs": [r.state_dict() for r in self.runs]}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state`` (:meth:`state_dict`); the global RNGs are restored last."""
        if len(state["runs"]) != self.k:
            raise ValueError(f"the checkpoint holds {len(state['runs'])} runs, this trainer {self.k}")
        load_models_state([r.model for r in self.runs], state["model"])
        for r, s in zip(self.runs, state["runs"]):
            r.load_state_dict(s)
        self.buffer.load_state_dict(state["buffer"])
        self.step = int(state["step"])
        self._set_active()
        set_rng_state(state["rng"])

    def relog_val(self, from_step: int) -> None:
        """Log again the evaluations at ``from_step`` or later (a resumed run's writer purges
        every event from its checkpoint's ``purge_step`` on, evaluations done before it included)."""
        for r in self.runs:
            for entry in r.result.history["val"]:
                if entry["step"] >= from_step:
                    r.log_val(entry["loss"], entry["acc"], entry["step"], self.data.spec.is_lm)
