"""The multi-domain trainer, run by the single-dataset loop's own epoch driver.

:func:`fit_multidomain` builds a :class:`MultiDomainTrainer` and hands it to
:func:`fmeval.training.loop.run_epochs`, so resuming, checkpointing the full
training state, keeping the best weights, early stopping and the observers'
callback point are the very code every fine-tuning run uses. What differs is
one epoch (:meth:`MultiDomainTrainer.train_epoch`: each step one batch of the
dataset the schedule drew, through that dataset's head) and validation
(:meth:`MultiDomainTrainer.validate`: the loss over all validation batches of
all datasets, each batch's loss times its dataset's weight, divided by the
number of batches, as the reference computes it).

Only the backbone and the active head change in a step: the other heads took no
part in the forward pass, so their gradients stay ``None`` (``zero_grad(set_to_none=True)``
after every step), and torch's Adam/AdamW skip a parameter without a gradient
entirely - no moment update and no decoupled weight decay. Gradient
accumulation would mix datasets in one step and is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fmeval.config import MultiDomainSettings, TrainConfig
from fmeval.data.augment import AugmentPolicy, augment_batch
from fmeval.device import autocast
from fmeval.errors import ConfigError, FmevalError
from fmeval.training.checkpoint import TrainState
from fmeval.training.hooks import TrainHooks
from fmeval.training.loop import FitResult, RunSetup, _logits, _Trainer, place_model, run_epochs
from fmeval.training.losses import task_rule
from fmeval.training.methods import Method
from fmeval.training.multidomain.losses import head_loss
from fmeval.training.multidomain.model import MultiHeadClassifier
from fmeval.training.multidomain.sampler import batch_counts, batch_rows, domain_order, domain_schedule, domain_weights
from fmeval.training.optim import ScheduleSpec, build_optimizer, build_scheduler, param_groups


@dataclass
class Domain:
    """One dataset of a multi-domain run: its head's key and its uint8 rows."""

    key: str
    flag: str
    task: str
    n_outputs: int
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    augment: AugmentPolicy | None = None


class _HasVal:
    has_val = True  # mm-PT selects and stops on validation: every dataset brings its split


class MultiDomainTrainer(_Trainer):
    """The trainer of :func:`fmeval.training.loop.run_epochs` for several datasets at once.

    Inherits the single-dataset trainer's ``snapshot``, ``fresh_state``-style
    bookkeeping and its selection/early-stopping rule (:meth:`update`); the
    selection metric is the total (weighted) validation loss under
    ``--select-metric loss`` (the reference), else the mean over datasets of
    the per-dataset validation metric.
    """

    def __init__(self, model: MultiHeadClassifier, domains: list[Domain], cfg: TrainConfig,
                 md: MultiDomainSettings, method: Method, setup: RunSetup, seed: int) -> None:
        from fmeval.metrics import METRICS, higher_is_better

        if cfg.accum_steps != 1:
            raise ConfigError("multi-domain training takes one dataset per optimiser step: --accum-steps must be 1.")
        self.model, self.domains, self.cfg, self.md, self.method, self.setup, self.seed = (
            model, domains, cfg, md, method, setup, seed)
        self.data = _HasVal()
        self.rules = [task_rule(d.task) for d in domains]
        counts = [batch_counts(len(d.train_labels), cfg.batch_size, cfg.max_steps_per_epoch) for d in domains]
        self.train_batches = [nb for nb, _ in counts]
        self.merge_last = [m for _, m in counts]
        if min(self.train_batches) < 1 or any(len(d.train_labels) < 2 for d in domains):
            raise ConfigError("every dataset of a multi-domain run needs at least 2 training samples.")
        self.val_batches = [math.ceil(len(d.val_labels) / cfg.batch_size) for d in domains]
        if min(self.val_batches) < 1:
            raise ConfigError("every dataset of a multi-domain run needs a validation split.")
        self.train_weights = domain_weights(md.domain_weights, self.train_batches)
        self.val_weights = domain_weights(md.domain_weights, self.val_batches)
        self.n_batches = int(sum(self.train_batches))  # optimiser steps per epoch
        groups = param_groups(model.backbone, model.head, weight_decay=cfg.weight_decay,
                              layer_decay=cfg.layer_decay, decay_scope=cfg.decay_scope)
        self.optimizer = build_optimizer(groups, cfg.lr, cfg.optimizer)
        spec = ScheduleSpec(warmup_steps=round(cfg.warmup_epochs * self.n_batches), steps_per_epoch=self.n_batches,
                            epochs=cfg.epochs, milestones=tuple(cfg.milestones), gamma=cfg.gamma)
        self.scheduler = build_scheduler(self.optimizer, spec, cfg.schedule)
        self.loss_fns = [head_loss(d.task, d.train_labels, d.n_outputs, ordinal_loss=md.ordinal_loss,
                                   class_weights=cfg.class_weights, pos_weight=cfg.pos_weight, device=setup.device)
                         for d in domains]
        if cfg.sampler != "shuffle":
            raise ConfigError("multi-domain training draws batches by the mm-PT schedule: --sampler must be shuffle.")
        self.by_loss = cfg.select_metric == "loss"
        self.metric_fn = None if self.by_loss else METRICS.get(cfg.select_metric)
        self.better_high = False if self.by_loss else higher_is_better(cfg.select_metric)
        self.keys = list(dict.fromkeys(method.state_keys(model)))
        self.last: dict[str, float] = {}

    def fresh_state(self) -> TrainState:
        state = super().fresh_state()
        for d in self.domains:
            state.curves[f"val_loss/{d.flag}"] = []
            if not self.by_loss:
                state.curves[f"val_{self.cfg.select_metric}/{d.flag}"] = []
        state.curves["steps"] = []
        return state

    def plan(self) -> dict:
        """What the run records about its schedule and weights."""
        return {
            "train_batches": dict(zip((d.flag for d in self.domains), self.train_batches)),
            "val_batches": dict(zip((d.flag for d in self.domains), self.val_batches)),
            "train_weights": dict(zip((d.flag for d in self.domains), map(float, self.train_weights))),
            "val_weights": dict(zip((d.flag for d in self.domains), map(float, self.val_weights))),
            "steps_per_epoch": self.n_batches,
        }

    def train_epoch(self, epoch: int, tick) -> float:
        cfg, setup = self.cfg, self.setup
        bs = cfg.batch_size
        schedule = domain_schedule(self.seed, epoch, self.train_batches)
        orders = [domain_order(self.seed, epoch, i, len(d.train_labels)) for i, d in enumerate(self.domains)]
        used = [0] * len(self.domains)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.method.set_train_mode(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        run_loss = 0.0
        for step, i in enumerate(schedule):
            d = self.domains[i]
            idx = batch_rows(orders[i], used[i], bs, self.train_batches[i], self.merge_last[i])
            used[i] += 1
            x = setup.transform.prepare(d.train_images[idx], setup.device, train=True, generator=gen)
            if setup.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.augment and d.augment is not None:
                x = augment_batch(x, d.augment, gen)
            y = self.rules[i].targets(d.train_labels[idx]).to(setup.device, non_blocking=True)
            self.model.use(d.key)
            with autocast(setup.device, setup.precision):
                logits = self.model(x)
            loss = self.loss_fns[i](logits, y) * float(self.train_weights[i])
            if not torch.isfinite(loss):
                raise FmevalError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                                  f"({d.flag}); lower --lr or check the data.")
            loss.backward()
            lr = self.optimizer.param_groups[-1]["lr"]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            if self.hooks is not None:  # callback point (issue 24): one optimiser step done
                self.hooks.step(epoch * self.n_batches + step + 1,
                                {"epoch": epoch + 1, "train_loss": value, "lr": lr, "domain": d.flag})
            run_loss += value
            tick(1, info=f"ep {epoch + 1} loss {run_loss / (step + 1):.4f}")
        return run_loss / max(len(schedule), 1)

    def validate(self) -> tuple[float, float]:
        """(total weighted validation loss over all batches, the selection value)."""
        cfg, setup = self.cfg, self.setup
        total, n_batches, metrics = 0.0, 0, []
        self.last = {}
        for i, d in enumerate(self.domains):
            self.model.use(d.key)
            logits = _logits(self.model, d.val_images, setup).to(setup.device)
            targets = self.rules[i].targets(d.val_labels).to(setup.device)
            losses = [float(self.loss_fns[i](logits[s:s + cfg.batch_size], targets[s:s + cfg.batch_size]))
                      for s in range(0, len(targets), cfg.batch_size)]
            total += float(self.val_weights[i]) * sum(losses)
            n_batches += len(losses)
            self.last[f"val_loss/{d.flag}"] = sum(losses) / len(losses)
            if not self.by_loss:
                y = d.val_labels if self.rules[i].multilabel else d.val_labels[:, 0]
                value = float(self.metric_fn(d.task, y, self.rules[i].scores(logits.cpu()).numpy()))
                self.last[f"val_{cfg.select_metric}/{d.flag}"] = value
                metrics.append(value)
        val_loss = total / max(n_batches, 1)
        return val_loss, val_loss if self.by_loss else float(np.mean(metrics))

    def epoch_metrics(self) -> dict[str, float]:
        return dict(self.last)

    def update(self, state: TrainState, epoch: int, train_loss: float, val_loss: float,
               val_metric: float, lr: float) -> None:
        super().update(state, epoch, train_loss, val_loss, val_metric, lr)
        for key, value in self.last.items():
            state.curves.setdefault(key, []).append(value)
        state.curves.setdefault("steps", []).append(self.n_batches)


def fit_multidomain(model: MultiHeadClassifier, domains: list[Domain], cfg: TrainConfig, md: MultiDomainSettings,
                    *, method: Method, setup: RunSetup, seed: int, run_dir=None, resume: bool = False,
                    on_epoch_end=None, description: str = "multi-domain", hooks: TrainHooks | None = None,
                    ) -> tuple[FitResult, dict]:
    """Train the shared backbone and every head; returns the fit and the schedule record."""
    cfg.validate()
    place_model(model, setup)
    tr = MultiDomainTrainer(model, domains, cfg, md, method, setup, seed)
    res = run_epochs(tr, model, cfg, setup=setup, run_dir=run_dir, resume=resume, on_epoch_end=on_epoch_end,
                     description=description, hooks=hooks)
    return res, tr.plan()
