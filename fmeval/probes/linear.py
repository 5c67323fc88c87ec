"""Linear probes on frozen features: a whole hyper-parameter grid at once.

As in DINOv2's linear evaluation, every (learning rate, weight decay) pair is
its own linear head, and all heads train together on the same minibatches:
the logits of G heads are one ``einsum``, and a vectorised AdamW step updates
every head with its own lr and decoupled weight decay. Each head early-stops
on validation loss independently; the head with the best validation score is
kept. Features are standardised with training statistics (folded back into
the exported weights), so one lr grid fits encoders of any feature scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fmeval.errors import ConfigError, FmevalError
from fmeval.progress import progress_bar


@dataclass(frozen=True)
class ProbeConfig:
    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
    epochs: int = 100
    batch_size: int = 1024
    patience: int = 10
    seed: int = 0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def grid(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]


@dataclass
class LinearProbe:
    """The selected head, in raw (unstandardised) feature space."""

    weight: torch.Tensor  # [D, C]
    bias: torch.Tensor  # [C]
    multilabel: bool
    lr: float
    weight_decay: float
    best_epoch: int
    val_loss: float
    epochs_run: int
    grid: list[dict] = field(default_factory=list)
    curves: dict[str, list[float]] = field(default_factory=dict)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().to(self.weight.device) @ self.weight + self.bias

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        z = self.logits(x)
        return torch.sigmoid(z) if self.multilabel else torch.softmax(z, dim=1)


def _loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Per-head mean loss. logits [G, N, C] -> [G]."""
    if multilabel:
        return F.binary_cross_entropy_with_logits(
            logits, y.float().expand_as(logits), reduction="none"
        ).mean(dim=(1, 2))
    g, n, c = logits.shape
    return F.cross_entropy(
        logits.reshape(g * n, c), y.repeat(g), reduction="none"
    ).view(g, n).mean(1)


def train_linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    n_outputs: int,
    multilabel: bool,
    config: ProbeConfig = ProbeConfig(),
    init_weight: torch.Tensor | None = None,
    description: str = "linear probe",
) -> LinearProbe:
    """Train all grid heads; return the one with the lowest validation loss.

    ``y`` is int64 [N] (class index) or float/int [N, L] (multi-label).
    ``init_weight`` [C, D] (e.g. zero-shot text embeddings) starts every head
    from that classifier instead of zeros.
    """
    dev = x_train.device
    if x_train.shape[0] == 0 or x_val.shape[0] == 0:
        raise ConfigError("the linear probe needs non-empty train and validation splits.")
    for name, t in (("train", x_train), ("val", x_val)):
        if not torch.isfinite(t).all():
            raise FmevalError(f"{name} features contain NaN/Inf; cannot train a probe.")
    y_train = y_train.to(dev)
    y_val = y_val.to(dev)
    if not multilabel:
        y_train, y_val = y_train.long().view(-1), y_val.long().view(-1)

    mu = x_train.float().mean(0)
    sd = x_train.float().std(0).clamp_min(1e-6)
    xs = (x_train.float() - mu) / sd
    xv = (x_val.float().to(dev) - mu) / sd

    grid = config.grid()
    g, d, c = len(grid), xs.shape[1], n_outputs
    lr = torch.tensor([p[0] for p in grid], device=dev).view(g, 1, 1)
    wd = torch.tensor([p[1] for p in grid], device=dev).view(g, 1, 1)
    w = torch.zeros(g, d, c, device=dev)
    b = torch.zeros(g, 1, c, device=dev)
    if init_weight is not None:
        w0 = init_weight.float().to(dev).T * sd[:, None]  # raw -> standardised space
        w += w0
        b += (mu @ init_weight.float().to(dev).T).view(1, 1, c)
    params = [w.requires_grad_(), b.requires_grad_()]
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    b1, b2 = config.betas

    best_loss = torch.full((g,), math.inf, device=dev)
    best_epoch = torch.zeros(g, dtype=torch.long, device=dev)
    best_w, best_b = w.detach().clone(), b.detach().clone()
    active = torch.ones(g, dtype=torch.bool, device=dev)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    n = xs.shape[0]
    bs = min(config.batch_size, n)
    step = 0
    curves: dict[str, list[list[float]]] = {"train_loss": [], "val_loss": []}
    epochs_run = 0
    with progress_bar(description, config.epochs, "ep") as tick:
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            total = torch.zeros(g, device=dev)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                logits = torch.einsum("nd,gdc->gnc", xs[idx], w) + b
                losses = _loss(logits, y_train[idx], multilabel)
                grads = torch.autograd.grad(losses.sum(), params)
                step += 1
                with torch.no_grad():
                    total += losses.detach() * len(idx)
                    for p, gr, (m, v) in zip(params, grads, state):
                        m.mul_(b1).add_(gr, alpha=1 - b1)
                        v.mul_(b2).addcmul_(gr, gr, value=1 - b2)
                        mhat = m / (1 - b1**step)
                        vhat = v / (1 - b2**step)
                        upd = mhat / (vhat.sqrt() + config.eps)
                        if p is w:
                            upd = upd + wd * p
                        p.sub_(lr * upd * active.view(g, 1, 1))
            with torch.no_grad():
                vl = _loss(torch.einsum("nd,gdc->gnc", xv, w) + b, y_val, multilabel)
                better = (vl < best_loss) & active
                best_loss = torch.where(better, vl, best_loss)
                best_epoch = torch.where(better, torch.full_like(best_epoch, epoch), best_epoch)
                best_w[better] = w.detach()[better]
                best_b[better] = b.detach()[better]
                active &= (epoch - best_epoch) < config.patience
            curves["train_loss"].append((total / n).tolist())
            curves["val_loss"].append(vl.tolist())
            epochs_run = epoch + 1
            tick(1, info=f"val loss {best_loss.min().item():.4f}")
            if not active.any():
                break

    if not torch.isfinite(best_loss).any():
        raise FmevalError("every linear-probe configuration diverged (NaN validation loss).")
    k = int(torch.argmin(best_loss))
    w_std, b_std = best_w[k], best_b[k, 0]
    weight = w_std / sd[:, None]
    bias = b_std - mu @ weight
    table = [
        {"lr": lr_, "weight_decay": wd_, "val_loss": float(best_loss[i]), "best_epoch": int(best_epoch[i])}
        for i, (lr_, wd_) in enumerate(grid)
    ]
    return LinearProbe(
        weight=weight.detach(),
        bias=bias.detach(),
        multilabel=multilabel,
        lr=grid[k][0],
        weight_decay=grid[k][1],
        best_epoch=int(best_epoch[k]),
        val_loss=float(best_loss[k]),
        epochs_run=epochs_run,
        grid=table,
        curves={
            "epoch": list(range(1, epochs_run + 1)),
            "train_loss": [row[k] for row in curves["train_loss"]],
            "val_loss": [row[k] for row in curves["val_loss"]],
        },
    )
