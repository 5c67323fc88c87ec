"""The one training loop behind LoRA and full fine-tuning.

Batches are built straight from the uint8 arrays: a seeded permutation per
epoch (a function of seed and epoch only, so a resumed run draws the same
order), ``prepare_batch`` on the target device, bf16 autocast and
channels-last on GPU. No DataLoader: at MedMNIST sizes the per-image PIL
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

from fmeval.adapters.base import Preprocess
from fmeval.data.transforms import prepare_batch
from fmeval.device import autocast
from fmeval.features import batched_inference
from fmeval.errors import ConfigError, FmevalError
from fmeval.progress import progress_bar
from fmeval.training.checkpoint import (
    TrainState,
    load_train_state,
    rng_state,
    save_train_state,
    set_rng_state,
)
from fmeval.training.losses import task_rule
from fmeval.training.methods import Classifier, Method
from fmeval.training.optim import build_optimizer, build_scheduler, param_groups


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. Defaults follow the MedMNIST+ protocol
    (Doerrich et al. 2025): AdamW, lr 1e-4, batch 64, cosine schedule, up to
    100 epochs with early stopping on validation loss (patience 5)."""

    epochs: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.01  # torch's AdamW default; matrices only
    batch_size: int = 64
    accum_steps: int = 1
    warmup_epochs: float = 1.0
    patience: int = 5  # epochs without val-loss improvement; 0 disables early stopping
    select_metric: str = "auc"
    pos_weight: float | None = None
    class_weights: str | None = None  # None | "balanced"
    augment: bool = False
    layer_decay: float | None = None
    max_steps_per_epoch: int | None = None  # cap on minibatches per epoch (quick looks)

    def validate(self) -> None:
        from fmeval.metrics import METRICS

        checks = {
            "--epochs must be >= 1": self.epochs >= 1,
            "--lr must be > 0": self.lr > 0,
            "--weight-decay must be >= 0": self.weight_decay >= 0,
            "--train-batch-size must be >= 1": self.batch_size >= 1,
            "--accum-steps must be >= 1": self.accum_steps >= 1,
            "--warmup-epochs must be >= 0": self.warmup_epochs >= 0,
            "--patience must be >= 0": self.patience >= 0,
            "--max-steps-per-epoch must be >= 1":
                self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "--pos-weight must be > 0": self.pos_weight is None or self.pos_weight > 0,
        }
        for msg, ok in checks.items():
            if not ok:
                raise ConfigError(msg + ".")
        METRICS.entry(self.select_metric)  # unknown names get suggestions
        if self.class_weights is not None:
            from fmeval.training.losses import WEIGHTINGS

            WEIGHTINGS.entry(self.class_weights)


@dataclass
class TrainData:
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    task: str
    n_outputs: int


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


def _batches(n: int, batch_size: int, cap: int | None) -> int:
    nb = math.ceil(n / batch_size)
    return min(nb, cap) if cap else nb


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """Shuffled sample order of one epoch; a pure function so resuming needs no RNG state."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def augment_batch(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Light augmentation: random horizontal flip and a shift of up to ``max_shift`` px."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen, device="cpu") < 0.5
    x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(-1), x)
    if max_shift > 0:
        dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    return x


def _logits(model: Classifier, images: np.ndarray, pre: Preprocess, geometry: str,
            device: torch.device, batch_size: int) -> torch.Tensor:
    """Logits of ``images`` in eval mode, float32 on CPU."""
    model.eval()
    return batched_inference(model, images, preprocess=pre, geometry=geometry,
                             batch_size=batch_size, device=device, description="predict",
                             name="classifier")


def predict(model: Classifier, images: np.ndarray, *, task: str, preprocess: Preprocess,
            geometry: str, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Class scores (softmax, or sigmoid for multi-label) [N, C] on CPU."""
    return task_rule(task).scores(_logits(model, images, preprocess, geometry, device, batch_size))


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: CUDA max allocated on GPU, else the process's peak RSS."""
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    out = {"peak_rss_mb": round(rss_mb, 1)}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def fit(
    model: Classifier,
    data: TrainData,
    cfg: TrainConfig,
    *,
    method: Method,
    preprocess: Preprocess,
    geometry: str,
    device: torch.device,
    seed: int,
    eval_batch_size: int = 256,
    run_dir: Path | None = None,
    resume: bool = False,
    on_epoch_end: EpochHook | None = None,
    description: str = "fine-tune",
) -> FitResult:
    """Train ``model`` (its trainable parameters already chosen by ``method``).

    On return the model holds the best weights by ``cfg.select_metric`` on
    validation. With ``run_dir`` the state is checkpointed after every epoch;
    ``resume=True`` continues from that checkpoint.
    """
    from fmeval.metrics import METRICS, higher_is_better

    cfg.validate()
    rule = task_rule(data.task)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.cuda.reset_peak_memory_stats(device)
    n = len(data.train_labels)
    bs = cfg.batch_size
    n_batches = _batches(n, bs, cfg.max_steps_per_epoch)
    if n % bs == 1 and n_batches == math.ceil(n / bs):
        n_batches -= 1  # a last batch of one breaks BatchNorm in training mode
    if n_batches < 1:
        raise ConfigError(f"the training split has {n} samples; need at least 2.")
    opt_steps = math.ceil(n_batches / cfg.accum_steps)
    groups = param_groups(model.backbone, model.head, weight_decay=cfg.weight_decay,
                          layer_decay=cfg.layer_decay)
    optimizer = build_optimizer(groups, cfg.lr)
    scheduler = build_scheduler(optimizer, round(cfg.warmup_epochs * opt_steps),
                                cfg.epochs * opt_steps)
    loss_fn = rule.loss_fn(data.train_labels, data.n_outputs, class_weights=cfg.class_weights,
                           pos_weight=cfg.pos_weight, device=device)
    val_targets = rule.targets(data.val_labels)
    y_val = data.val_labels if rule.multilabel else data.val_labels[:, 0]
    metric_fn = METRICS.get(cfg.select_metric)
    better_high = higher_is_better(cfg.select_metric)
    keys = method.state_keys(model)

    def snapshot() -> dict[str, torch.Tensor]:
        sd = model.state_dict()
        return {k: sd[k].detach().cpu().clone() for k in keys}

    state = load_train_state(run_dir) if (resume and run_dir is not None) else None
    resumed_at: int | None = None
    if state is not None:
        model.load_state_dict(state.model, strict=False)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        set_rng_state(state.rng)
        resumed_at = state.epoch + 1
    else:
        torch.manual_seed(seed)  # dropout / LoRA dropout stream
        state = TrainState(
            epoch=-1, model={}, optimizer={}, scheduler={}, rng={}, best_state=snapshot(),
            best_epoch=0, best_metric=-math.inf if better_high else math.inf,
            best_val_loss=math.inf, bad_epochs=0, done=False,
            curves={"epoch": [], "train_loss": [], "val_loss": [], f"val_{cfg.select_metric}": [],
                    "lr": []},
        )

    total = (cfg.epochs - (state.epoch + 1)) * n_batches if not state.done else 0
    with progress_bar(description, total, "step") as tick:
        epoch = state.epoch + 1
        while not state.done and epoch < cfg.epochs:
            t0 = time.perf_counter()
            order = epoch_order(seed, epoch, n)
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            method.set_train_mode(model)
            optimizer.zero_grad(set_to_none=True)
            run_loss, seen = 0.0, 0
            for b in range(n_batches):
                idx = order[b * bs:(b + 1) * bs]
                x = prepare_batch(data.train_images[idx], preprocess, geometry, device)
                if cfg.augment:
                    x = augment_batch(x, gen)
                y = rule.targets(data.train_labels[idx]).to(device, non_blocking=True)
                with autocast(device):
                    logits = model(x)
                loss = loss_fn(logits, y)
                if not torch.isfinite(loss):
                    raise FmevalError(
                        f"training loss became {loss.item()} at epoch {epoch + 1}, step {b + 1}; "
                        "lower --lr or check the data."
                    )
                (loss / cfg.accum_steps).backward()
                if (b + 1) % cfg.accum_steps == 0 or b + 1 == n_batches:
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                run_loss += loss.item() * len(idx)
                seen += len(idx)
                tick(1, info=f"ep {epoch + 1} loss {run_loss / seen:.4f}")
            val_logits = _logits(model, data.val_images, preprocess, geometry, device,
                                 eval_batch_size)
            val_loss = float(loss_fn(val_logits.to(device), val_targets.to(device)))
            val_metric = float(metric_fn(data.task, y_val, rule.scores(val_logits).numpy()))
            c = state.curves
            c["epoch"].append(epoch + 1)
            c["train_loss"].append(run_loss / max(seen, 1))
            c["val_loss"].append(val_loss)
            c[f"val_{cfg.select_metric}"].append(val_metric)
            c["lr"].append(optimizer.param_groups[-1]["lr"])
            improved = (val_metric > state.best_metric) if better_high else (val_metric < state.best_metric)
            if improved or state.best_epoch == 0:
                state.best_metric, state.best_epoch = val_metric, epoch + 1
                state.best_state = snapshot()
            if val_loss < state.best_val_loss:
                state.best_val_loss, state.bad_epochs = val_loss, 0
            else:
                state.bad_epochs += 1
            state.epoch = epoch
            state.epoch_times.append(time.perf_counter() - t0)
            state.done = epoch + 1 >= cfg.epochs or (0 < cfg.patience <= state.bad_epochs)
            tick(0, info=f"ep {epoch + 1} loss {run_loss / max(seen, 1):.4f} val_loss {val_loss:.4f} "
                         f"val_{cfg.select_metric} {val_metric:.4f}")
            if run_dir is not None:
                state.model, state.rng = snapshot(), rng_state()
                state.optimizer, state.scheduler = optimizer.state_dict(), scheduler.state_dict()
                save_train_state(run_dir, state)
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
        steps_per_epoch=n_batches,
        peak_memory=peak_memory(device),
    )

