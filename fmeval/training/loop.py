"""The one training loop behind LoRA and full fine-tuning.

Batches are built straight from the uint8 arrays: a seeded permutation per
epoch (a function of seed and epoch only, so a resumed run draws the same
order), the run's transform on the target device, and the run's precision
(bf16 autocast where the policy chose it). No DataLoader: at MedMNIST sizes the per-image PIL
pipeline is the bottleneck, not the model. After every epoch the loop scores
the validation split, keeps the best weights by ``select_metric``, applies
early stopping on validation loss and checkpoints the full training state.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from fmeval.config import TrainConfig
from fmeval.data.augment import AugmentPolicy, augment_batch
from fmeval.device import autocast
from fmeval.errors import ConfigError, FmevalError
from fmeval.features import Transform, batched_inference
from fmeval.progress import progress_bar
from fmeval.training.checkpoint import (
    TrainState,
    load_train_state,
    rng_state,
    save_train_state,
    set_rng_state,
)
from fmeval.training.hooks import TrainHooks
from fmeval.training.losses import task_rule
from fmeval.training.methods import Classifier, Method
from fmeval.training.optim import ScheduleSpec, build_optimizer, build_scheduler, param_groups


@dataclass
class TrainData:
    """``val_images`` None: no validation data (few-shot with fixed hyper-parameters):
    every epoch runs and the last one is kept."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray | None
    val_labels: np.ndarray | None
    task: str
    n_outputs: int

    @property
    def has_val(self) -> bool:
        return self.val_images is not None


@dataclass
class FitResult:
    best_epoch: int  # 1-based
    best_metric: float
    epochs_run: int
    stopped_early: bool
    resumed_at_epoch: int | None  # epochs already done when this process started
    curves: dict[str, list[float]] = field(default_factory=dict)
    epoch_times: list[float] = field(default_factory=list)
    steps_per_epoch: int = 0
    peak_memory: dict[str, float] = field(default_factory=dict)


EpochHook = Callable[[int, TrainState], None]


@dataclass
class RunSetup:
    """How a run executes (not what it learns): device, precision, transform."""

    transform: Transform
    device: torch.device
    precision: str = "fp32"
    channels_last: bool = False
    eval_batch_size: int = 256
    augment: AugmentPolicy | None = None


def _batches(n: int, batch_size: int, cap: int | None) -> int:
    nb = math.ceil(n / batch_size)
    return min(nb, cap) if cap else nb


def epoch_order(seed: int, epoch: int, n: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Sample order of one epoch; a pure function so resuming needs no RNG state.

    ``weights`` (per-sample, class-balanced sampling) draws ``n`` indices with
    replacement in proportion to them instead of a permutation.
    """
    rng = np.random.default_rng([seed, epoch])
    if weights is None:
        return rng.permutation(n)
    return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def balanced_sample_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weights 1 / count(class) so every class is drawn equally often."""
    y = labels[:, 0]
    counts = np.bincount(y)
    return 1.0 / counts[y]


def _logits(model: Classifier, images: np.ndarray, setup: RunSetup) -> torch.Tensor:
    """Logits of ``images`` in eval mode, float32 on CPU."""
    model.eval()
    return batched_inference(model, images, transform=setup.transform, batch_size=setup.eval_batch_size,
                             device=setup.device, precision=setup.precision,
                             description="predict", name="classifier")


def predict(model: Classifier, images: np.ndarray, *, task: str, setup: RunSetup) -> torch.Tensor:
    """Class scores (softmax, or sigmoid for multi-label) [N, C] on CPU."""
    return task_rule(task).scores(_logits(model, images, setup))


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: CUDA max allocated on GPU, else the process's peak RSS."""
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    out = {"peak_rss_mb": round(rss_mb, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class _Trainer:
    """One fit: optimiser, schedule, loss and the per-epoch steps.

    Split out of :func:`fit` so each piece (a training epoch, a validation
    pass, the selection/stopping rule) reads on its own.
    """

    hooks: TrainHooks | None = None  # set by run_epochs: observers of every step

    def __init__(self, model: Classifier, data: TrainData, cfg: TrainConfig, method: Method,
                 setup: RunSetup, seed: int) -> None:
        from fmeval.metrics import METRICS, higher_is_better

        self.model, self.data, self.cfg, self.method, self.setup, self.seed = (
            model, data, cfg, method, setup, seed)
        self.rule = task_rule(data.task)
        n = len(data.train_labels)
        self.n = n
        self.n_batches = _batches(n, cfg.batch_size, cfg.max_steps_per_epoch)
        # A last batch of one breaks BatchNorm in training mode; it joins the batch before it, so
        # every image is trained on every epoch (the references train on it; OrganAMNIST's 34,561
        # images at batch 64 leave one over).
        self.merge_last = n > 1 and n % cfg.batch_size == 1 and self.n_batches == math.ceil(n / cfg.batch_size)
        if self.merge_last:
            self.n_batches -= 1
        if self.n_batches < 1:
            raise ConfigError(f"the training split has {n} samples; need at least 2.")
        opt_steps = math.ceil(self.n_batches / cfg.accum_steps)
        groups = param_groups(model.backbone, model.head, weight_decay=cfg.weight_decay,
                              layer_decay=cfg.layer_decay, decay_scope=cfg.decay_scope)
        self.optimizer = build_optimizer(groups, cfg.lr, cfg.optimizer)
        spec = ScheduleSpec(warmup_steps=round(cfg.warmup_epochs * opt_steps), steps_per_epoch=opt_steps,
                            epochs=cfg.epochs, milestones=tuple(cfg.milestones), gamma=cfg.gamma)
        self.scheduler = build_scheduler(self.optimizer, spec, cfg.schedule)
        self.loss_fn = self.rule.loss_fn(data.train_labels, data.n_outputs, class_weights=cfg.class_weights,
                                         pos_weight=cfg.pos_weight, device=setup.device)
        self.sample_weights = (balanced_sample_weights(data.train_labels)
                               if cfg.sampler == "balanced" and not self.rule.multilabel else None)
        if data.has_val:
            self.val_targets = self.rule.targets(data.val_labels)
            self.y_val = data.val_labels if self.rule.multilabel else data.val_labels[:, 0]
        self.by_loss = cfg.select_metric == "loss"
        self.metric_fn = None if self.by_loss else METRICS.get(cfg.select_metric)
        self.better_high = False if self.by_loss else higher_is_better(cfg.select_metric)
        self.keys = method.state_keys(model)

    def snapshot(self) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict()
        return {k: sd[k].detach().cpu().clone() for k in self.keys}

    def fresh_state(self) -> TrainState:
        torch.manual_seed(self.seed)  # dropout / LoRA dropout stream
        return TrainState(
            epoch=-1, model={}, optimizer={}, scheduler={}, rng={}, best_state=self.snapshot(),
            best_epoch=0, best_metric=-math.inf if self.better_high else math.inf,
            best_val_loss=math.inf, bad_epochs=0, done=False,
            curves={"epoch": [], "train_loss": [], "val_loss": [], f"val_{self.cfg.select_metric}": [],
                    "lr": []},
        )

    def train_epoch(self, epoch: int, tick) -> float:
        cfg, setup, data = self.cfg, self.setup, self.data
        bs = cfg.batch_size
        order = epoch_order(self.seed, epoch, self.n, self.sample_weights)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.method.set_train_mode(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        run_loss, seen = 0.0, 0
        for b in range(self.n_batches):
            last = self.merge_last and b == self.n_batches - 1
            idx = order[b * bs:] if last else order[b * bs:(b + 1) * bs]
            x = setup.transform.prepare(data.train_images[idx], setup.device, train=True, generator=gen)
            if setup.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.augment and setup.augment is not None:
                x = augment_batch(x, setup.augment, gen)
            y = self.rule.targets(data.train_labels[idx]).to(setup.device, non_blocking=True)
            with autocast(setup.device, setup.precision):
                logits = self.model(x)
            loss = self.loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise FmevalError(
                    f"training loss became {loss.item()} at epoch {epoch + 1}, step {b + 1}; "
                    "lower --lr or check the data."
                )
            (loss / cfg.accum_steps).backward()
            if (b + 1) % cfg.accum_steps == 0 or b + 1 == self.n_batches:
                lr = self.optimizer.param_groups[-1]["lr"]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                if self.hooks is not None:  # callback point (issue 24): one optimiser step done
                    self.hooks.step(epoch * self.n_batches + b + 1,
                                    {"epoch": epoch + 1, "train_loss": loss.item(), "lr": lr})
            run_loss += loss.item() * len(idx)
            seen += len(idx)
            tick(1, info=f"ep {epoch + 1} loss {run_loss / seen:.4f}")
        return run_loss / max(seen, 1)

    def validate(self) -> tuple[float, float]:
        """(validation loss, validation selection metric); NaN without validation data."""
        if not self.data.has_val:
            return math.nan, math.nan
        val_logits = _logits(self.model, self.data.val_images, self.setup)
        val_loss = float(self.loss_fn(val_logits.to(self.setup.device), self.val_targets.to(self.setup.device)))
        if self.by_loss:
            return val_loss, val_loss
        scores = self.rule.scores(val_logits).numpy()
        return val_loss, float(self.metric_fn(self.data.task, self.y_val, scores))

    def epoch_metrics(self) -> dict[str, float]:
        """Numbers of the last epoch beyond the common ones (for observers); none here."""
        return {}

    def update(self, state: TrainState, epoch: int, train_loss: float, val_loss: float,
               val_metric: float, lr: float) -> None:
        """Record the epoch; keep the best weights by the selection metric; early stopping
        counts epochs without a validation-loss improvement."""
        c = state.curves
        c["epoch"].append(epoch + 1)
        c["train_loss"].append(train_loss)
        c["val_loss"].append(val_loss)
        if not self.by_loss:  # --select-metric loss: the metric curve *is* val_loss (one list, not two appends)
            c[f"val_{self.cfg.select_metric}"].append(val_metric)
        c["lr"].append(lr)
        improved = (val_metric > state.best_metric) if self.better_high else (val_metric < state.best_metric)
        if improved or state.best_epoch == 0 or not self.data.has_val:  # no validation: keep the last epoch
            state.best_metric, state.best_epoch = val_metric, epoch + 1
            state.best_state = self.snapshot()
        if not self.data.has_val:
            state.bad_epochs = 0  # no early stopping without validation data
        elif val_loss < state.best_val_loss:
            state.best_val_loss, state.bad_epochs = val_loss, 0
        else:
            state.bad_epochs += 1
        state.epoch = epoch
        state.done = epoch + 1 >= self.cfg.epochs or (0 < self.cfg.patience <= state.bad_epochs)


def fit(
    model: Classifier,
    data: TrainData,
    cfg: TrainConfig,
    *,
    method: Method,
    setup: RunSetup,
    seed: int,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch_end: EpochHook | None = None,
    description: str = "fine-tune",
    hooks: TrainHooks | None = None,
) -> FitResult:
    """Train ``model`` (its trainable parameters already chosen by ``method``).

    On return the model holds the best weights by ``cfg.select_metric`` on
    validation. With ``run_dir`` the state is checkpointed after every epoch;
    ``resume=True`` continues from that checkpoint. ``hooks``: observers of
    every step and epoch (:mod:`fmeval.training.hooks`).
    """
    cfg.validate()
    place_model(model, setup)
    tr = _Trainer(model, data, cfg, method, setup, seed)
    return run_epochs(tr, model, cfg, setup=setup, run_dir=run_dir, resume=resume, on_epoch_end=on_epoch_end,
                      description=description, hooks=hooks)


def place_model(model: torch.nn.Module, setup: RunSetup) -> None:
    """Move the model to the run's device (and memory format) before its optimiser is built."""
    model.to(setup.device)
    if setup.channels_last:
        model.to(memory_format=torch.channels_last)
    if setup.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(setup.device)


def run_epochs(
    tr: "_Trainer",
    model: torch.nn.Module,
    cfg: TrainConfig,
    *,
    setup: RunSetup,
    run_dir: Path | None,
    resume: bool,
    on_epoch_end: EpochHook | None,
    description: str,
    hooks: TrainHooks | None = None,
) -> FitResult:
    """The epoch loop every trainer shares: resume, train, validate, select/stop, checkpoint.

    ``tr`` is any trainer with ``optimizer``, ``scheduler``, ``n_batches``,
    ``fresh_state()``, ``snapshot()``, ``train_epoch(epoch, tick)``,
    ``validate()``, ``update(...)`` and ``epoch_metrics()`` (the single-dataset
    :class:`_Trainer`; the multi-domain trainer of :mod:`fmeval.training.multidomain`).
    """
    device = setup.device
    tr.hooks = hooks
    state = load_train_state(run_dir) if (resume and run_dir is not None) else None
    resumed_at: int | None = None
    if state is not None:
        model.load_state_dict(state.model, strict=False)
        tr.optimizer.load_state_dict(state.optimizer)
        tr.scheduler.load_state_dict(state.scheduler)
        set_rng_state(state.rng)
        resumed_at = state.epoch + 1
    else:
        state = tr.fresh_state()

    total = (cfg.epochs - (state.epoch + 1)) * tr.n_batches if not state.done else 0
    with progress_bar(description, total, "step") as tick:
        epoch = state.epoch + 1
        while not state.done and epoch < cfg.epochs:
            t0 = time.perf_counter()
            lr = tr.optimizer.param_groups[-1]["lr"]
            train_loss = tr.train_epoch(epoch, tick)
            val_loss, val_metric = tr.validate()
            tr.update(state, epoch, train_loss, val_loss, val_metric, lr)
            state.epoch_times.append(time.perf_counter() - t0)
            tick(0, info=f"ep {epoch + 1} loss {train_loss:.4f} val_loss {val_loss:.4f} "
                         f"val_{cfg.select_metric} {val_metric:.4f}")
            if run_dir is not None:
                state.model, state.rng = tr.snapshot(), rng_state()
                state.optimizer, state.scheduler = tr.optimizer.state_dict(), tr.scheduler.state_dict()
                save_train_state(run_dir, state)
            # -- callback point (issue 24): observers of the finished epoch ------------------
            if hooks is not None:
                hooks.epoch(epoch + 1, {"train_loss": train_loss, "val_loss": val_loss,
                                        f"val_{cfg.select_metric}": val_metric, "lr": lr,
                                        "best_epoch": state.best_epoch, "epoch_time_s": state.epoch_times[-1],
                                        **tr.epoch_metrics()})
            # ---------------------------------------------------------------------------------
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, state)
            epoch += 1

    model.load_state_dict(state.best_state, strict=False)
    model.eval()
    return FitResult(
        best_epoch=state.best_epoch,
        best_metric=state.best_metric,
        epochs_run=state.epoch + 1,
        stopped_early=state.epoch + 1 < cfg.epochs,
        resumed_at_epoch=resumed_at,
        curves={k: list(v) for k, v in state.curves.items()},
        epoch_times=list(state.epoch_times),
        steps_per_epoch=tr.n_batches,
        peak_memory=peak_memory(device),
    )
