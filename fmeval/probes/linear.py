"""Linear probes on frozen features: a whole hyper-parameter grid at once.

As in DINOv2's linear evaluation, every (learning rate, weight decay) pair is
its own linear head, and all heads train together on the same minibatches:
the logits of G heads are one GEMM against a ``[D, G*C]`` weight matrix, and a
vectorised AdamW step updates every head with its own lr and decoupled weight
decay. Each head early-stops
on validation loss independently; the head with the best validation score is
kept. Features are standardised with training statistics (folded back into
the exported weights), so one lr grid fits encoders of any feature scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from fmeval.config import ProbeConfig
from fmeval.errors import ConfigError, FmevalError
from fmeval.progress import progress_bar

_EXP_FLOOR = 80.0  # exp(-80) ~ 1.8e-35: the smallest probability kept (floats stay normal)
PROBE_PRECISIONS = ("fp32", "bf16")


def cosine_epoch_factor(epoch: int, epochs: int) -> float:
    """LR factor of epoch ``epoch`` (0-based) under timm's ``CosineLRScheduler(t_initial=epochs,
    t_in_epochs=True)`` stepped with ``step(epoch=e)`` after each epoch, as the MedMNIST+
    code does: epochs 0 and 1 run at the base LR, epoch k at cos-factor(k - 1)."""
    return 0.5 * (1.0 + math.cos(math.pi * max(epoch - 1, 0) / max(epochs, 1)))


def probe_lr_factor(config: ProbeConfig, epoch: int) -> float:
    """The probe's LR multiplier in ``epoch``: 1, or timm's per-epoch cosine (MedMNIST+)."""
    if config.schedule == "cosine-epoch":
        return cosine_epoch_factor(epoch, config.epochs)
    return 1.0


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


def _loss_and_grad(
    logits: torch.Tensor, y: torch.Tensor, multilabel: bool, grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-head mean loss of logits [N, G, C] -> ([G], N * d(sum of losses)/d logits).

    The gradients of softmax cross-entropy and of BCE are closed-form, so a
    step needs no autograd graph. The returned gradient is *not* divided by N
    (the caller folds that into its GEMM). Softmax is written out (max, exp,
    sum: 3x faster than ``log_softmax`` over C ~ 10) and its exponent floored
    at ``-_EXP_FLOOR``: probabilities below ~1e-35 would be subnormal floats,
    and one subnormal in the gradient slows the next GEMM several-fold on x86;
    they contribute nothing a float32 weight could register.
    """
    n, g, c = logits.shape
    if multilabel:
        yf = y.float().unsqueeze(1)  # [N, 1, L]
        loss = F.binary_cross_entropy_with_logits(logits, yf.expand_as(logits), reduction="none")
        loss = loss.mean(dim=(0, 2))
        if not grad:
            return loss, None
        p = torch.sigmoid(logits.clamp(min=-_EXP_FLOOR))  # no subnormal p; 1 - p never is one
        return loss, p.sub_(yf).div_(c)
    zs = logits - logits.amax(dim=2, keepdim=True)
    e = zs.clamp(min=-_EXP_FLOOR).exp_()
    s = e.sum(dim=2, keepdim=True)
    yi = y.view(n, 1, 1).expand(n, g, 1)
    loss = (s.log().squeeze(2) - zs.gather(2, yi).squeeze(2)).mean(0)
    if not grad:
        return loss, None
    return loss, e.div_(s).scatter_add_(2, yi, torch.full_like(zs[:, :, :1], -1.0))  # softmax - onehot


def _all_finite(t: torch.Tensor) -> bool:
    """NaN/Inf check without a [N, D] boolean temporary (min/max propagate NaN)."""
    if t.numel() == 0 or not t.is_floating_point():
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _mean_std(x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Column mean and (unbiased) std, two passes over row chunks, float64 sums:
    no full-size temporary, and faster than ``Tensor.std(0)`` on CPU."""
    n, d = x.shape
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    for i in range(0, n, chunk):
        total += x[i : i + chunk].float().sum(0, dtype=torch.float64)
    mu = (total / n).float()
    sq = torch.zeros(d, dtype=torch.float64, device=x.device)
    for i in range(0, n, chunk):
        c = x[i : i + chunk].float() - mu
        sq += (c * c).sum(0, dtype=torch.float64)
    return mu, (sq / max(n - 1, 1)).sqrt().float()


@dataclass
class _Heads:
    """The heads still training, compacted: weights | bias rows ``[D+1, g*C]`` and AdamW moments."""

    idx: torch.Tensor  # [g] grid indices of the working heads
    wa: torch.Tensor  # [D+1, g, C]: rows 0..D-1 weights, row D bias (standardised space)
    ma: torch.Tensor
    va: torch.Tensor

    def keep(self, mask: torch.Tensor) -> None:
        self.idx = self.idx[mask]
        self.wa, self.ma, self.va = (t[:, mask].contiguous() for t in (self.wa, self.ma, self.va))


class _Minibatch:
    """Preallocated buffers for one minibatch step (raw rows, standardised rows, grads)."""

    def __init__(self, bs: int, d: int, dev: torch.device, precision: str) -> None:
        self.bs = bs
        self.raw = torch.empty(bs, d, device=dev)
        self.std = torch.empty(bs, d, device=dev)
        self.low = precision == "bf16"

    def logits_and_grad(self, xt, idx, shift, inv_sd, h: _Heads, y, multilabel):
        """Loss per head and the [D+1, g, C] gradient of the mean loss over the batch."""
        nb, d = len(idx), xt.shape[1]
        gh, c = h.wa.shape[1], h.wa.shape[2]
        torch.index_select(xt, 0, idx, out=self.raw[:nb])
        xs = torch.addcmul(shift, self.raw[:nb], inv_sd, out=self.std[:nb])
        wa = h.wa.view(d + 1, gh * c)
        if self.low:  # bf16 GEMMs, float32 master weights, loss and update
            xl = xs.to(torch.bfloat16)
            logits = torch.mm(xl, wa[:d].to(torch.bfloat16)).float().add_(wa[d])
        else:
            logits = torch.addmm(wa[d], xs, wa[:d])
        losses, gz = _loss_and_grad(logits.view(nb, gh, c), y, multilabel)
        gz = gz.view(nb, gh * c)
        ga = torch.empty(d + 1, gh * c, device=xt.device)
        if self.low:
            ga[:d] = torch.mm(xl.T, gz.to(torch.bfloat16)).float().mul_(1.0 / nb)
        else:
            torch.addmm(ga[:d], xs.T, gz, beta=0.0, alpha=1.0 / nb, out=ga[:d])
        torch.sum(gz, 0, out=ga[d]).mul_(1.0 / nb)
        return losses, ga.view(d + 1, gh, c)


def _adamw_step(h: _Heads, ga: torch.Tensor, lr: torch.Tensor, decay: torch.Tensor, step: int,
                config: ProbeConfig) -> None:
    """p <- p * (1 - lr wd) - lr * (m / bc1) / (sqrt(v / bc2) + eps), every head at once."""
    b1, b2 = config.betas
    bc1, bc2 = 1 - b1**step, 1 - b2**step
    h.ma.lerp_(ga, 1 - b1)
    h.va.mul_(b2).addcmul_(ga, ga, value=1 - b2)
    denom = h.va.sqrt().add_(config.eps * math.sqrt(bc2)).div_(lr * (math.sqrt(bc2) / bc1))
    h.wa.mul_(decay).addcdiv_(h.ma, denom, value=-1.0)


def _init_heads(d: int, g: int, c: int, mu, sd, init_weight, dev) -> torch.Tensor:
    """[D+1, G, C] start weights | bias in standardised space (zeros, or a given classifier)."""
    wa = torch.zeros(d + 1, g, c, device=dev)
    if init_weight is not None:
        w0 = init_weight.float().to(dev).T * sd[:, None]  # raw -> standardised space
        wa[:d] += w0[:, None, :]
        wa[d] += (mu @ init_weight.float().to(dev).T).view(1, c)
    return wa


def _check_inputs(x_train, x_val, precision: str, config: ProbeConfig) -> None:
    if precision not in PROBE_PRECISIONS:
        raise ConfigError(f"linear-probe precision must be one of {PROBE_PRECISIONS}, got {precision!r}.")
    has_val = x_val is not None
    if x_train.shape[0] == 0 or (has_val and x_val.shape[0] == 0):
        raise ConfigError("the linear probe needs non-empty train and validation splits.")
    if not has_val and len(config.grid()) != 1:
        raise ConfigError("without validation data the linear probe trains one head: give one --lr and one --wd.")
    for name, t in (("train", x_train), ("val", x_val)):
        if t is not None and not _all_finite(t):
            raise FmevalError(f"{name} features contain NaN/Inf; cannot train a probe.")


def _standardiser(xt: torch.Tensor, standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the *training* features (or 0 and 1 without standardising)."""
    if standardize:
        mu, sd = _mean_std(xt)
        return mu, sd.clamp_min(1e-6)
    return torch.zeros(xt.shape[1], device=xt.device), torch.ones(xt.shape[1], device=xt.device)


def _val_loss(wa: torch.Tensor, xva: torch.Tensor, y_val, multilabel: bool) -> torch.Tensor:
    """Validation loss per head of weights | bias ``[D+1, g, C]`` (float32)."""
    d1, gh, c = wa.shape
    wv = wa.view(d1, gh * c)
    vl, _ = _loss_and_grad(torch.addmm(wv[d1 - 1], xva, wv[: d1 - 1]).view(-1, gh, c), y_val,
                           multilabel, grad=False)
    return vl


def train_linear_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor | None,
    y_val: torch.Tensor | None,
    *,
    n_outputs: int,
    multilabel: bool,
    config: ProbeConfig = ProbeConfig(),
    init_weight: torch.Tensor | None = None,
    standardize: bool = True,
    seed: int = 0,
    description: str = "linear probe",
    precision: str = "fp32",
    callbacks: Sequence[Callable[[int, Mapping[str, float]], None]] = (),
) -> LinearProbe:
    """Train all grid heads; return the one with the lowest validation loss.

    ``y`` is int64 [N] (class index) or float/int [N, L] (multi-label).
    ``init_weight`` [C, D] (e.g. zero-shot text embeddings) starts every head
    from that classifier instead of zeros, and that unchanged classifier is a
    selection candidate itself (best epoch 0). Without validation data
    (``x_val`` None: a few-shot run with fixed hyper-parameters) the grid
    must be one head, which trains for all epochs and keeps the last. ``standardize``: train on
    features standardised with *training* statistics (folded back into the
    exported head); MedMNIST+'s probe trains on raw features. ``seed`` sets the
    minibatch order. ``precision="bf16"`` runs the two GEMMs of a step in bf16
    (fast where bf16 is native: AMX CPUs, GPUs) with float32 master weights,
    loss, AdamW and validation; ``"fp32"`` everywhere else. ``callbacks`` are called after every
    epoch with ``(epoch, {name: value})`` (experiment tracking; see :func:`_epoch_metrics`).

    Performance notes: the G heads are one ``[D, G*C]`` matrix, so a step is
    two GEMMs (logits; weight gradient) around a closed-form loss gradient (no
    autograd), and the AdamW update is a handful of fused in-place kernels.
    Features are standardised per minibatch into a preallocated buffer (no
    standardised copy of the training set). Heads that have early-stopped are
    dropped from the GEMMs: their weights were frozen anyway, so the result is
    unchanged (their curve entries repeat their last values).
    """
    _check_inputs(x_train, x_val, precision, config)
    dev = x_train.device
    has_val = x_val is not None
    y_train = y_train.to(dev)
    if not multilabel:
        y_train = y_train.long().view(-1)
    if has_val:
        y_val = y_val.to(dev)
        y_val = y_val if multilabel else y_val.long().view(-1)

    xt = x_train.float()  # no copy for float32 input
    mu, sd = _standardiser(xt, standardize)  # statistics of the *training* split only
    inv_sd, shift = 1.0 / sd, -mu / sd  # standardise: x * inv_sd + shift
    xva = torch.addcmul(shift, x_val.float().to(dev), inv_sd) if has_val else None  # standardised val

    grid = config.grid()
    g, d = len(grid), xt.shape[1]
    wa0 = _init_heads(d, g, n_outputs, mu, sd, init_weight, dev)
    h = _Heads(torch.arange(g, device=dev), wa0, torch.zeros_like(wa0), torch.zeros_like(wa0))
    sel = _Selection.start(wa0, g, dev)
    if init_weight is not None and has_val:
        # The unchanged starting classifier (e.g. zero-shot) is a candidate too:
        # it is kept when no trained epoch of a head beats it on validation.
        with torch.no_grad():
            sel.best_loss.copy_(_val_loss(h.wa, xva, y_val, multilabel))
        sel.best_epoch.fill_(-1)

    epoch_fn = _EpochRunner(xt, y_train, shift, inv_sd, multilabel, config, grid,
                            torch.Generator(device="cpu").manual_seed(seed),  # the run's seed: minibatch order
                            _Minibatch(min(config.batch_size, xt.shape[0]), d, dev, precision))
    with progress_bar(description, config.epochs, "ep") as tick:
        for epoch in range(config.epochs):
            total = epoch_fn(epoch, h)
            trained = h.idx  # end_epoch may drop heads that stop
            tick(1, info=sel.end_epoch(epoch, h, total / xt.shape[0], xva, y_val, multilabel, config.patience))
            for cb in callbacks:  # -- step callbacks (experiment tracking): read-only --
                cb(epoch + 1, _epoch_metrics(sel, trained, total / xt.shape[0], config, epoch))
            if not sel.active.any():
                break
    return _selected(sel.best_wa, sel.best_loss, sel.best_epoch, grid, mu, sd, d, multilabel, sel.epochs_run,
                     sel.curves, has_val)


def _epoch_metrics(sel: "_Selection", trained: torch.Tensor, train_loss: torch.Tensor, config: ProbeConfig,
                   epoch: int) -> dict[str, float]:
    """One epoch of the grid, for a tracker: the best train and validation loss over the heads that
    trained this epoch, the best validation loss so far, the heads still training and the lr factor."""
    out = {"probe/train_loss_min": float(train_loss.min()), "probe/heads_active": float(len(trained)),
           "probe/lr_factor": probe_lr_factor(config, epoch)}
    val = sel.last_val[trained]
    if not torch.isnan(val).all():
        out["probe/val_loss_min"] = float(val.min())
        out["probe/best_val_loss"] = float(sel.best_loss.min())
    return out


class _EpochRunner:
    """One epoch of minibatch AdamW steps over every still-active head (one GEMM pair a step)."""

    def __init__(self, xt, y_train, shift, inv_sd, multilabel: bool, config: ProbeConfig, grid, gen, mb) -> None:
        dev = xt.device
        self.xt, self.y, self.shift, self.inv_sd, self.multilabel = xt, y_train, shift, inv_sd, multilabel
        self.config, self.gen, self.mb, self.step = config, gen, mb, 0
        self.lr_all = torch.tensor([p[0] for p in grid], device=dev)
        self.wd_all = torch.tensor([p[1] for p in grid], device=dev)

    def __call__(self, epoch: int, h: _Heads) -> torch.Tensor:
        """Sum over the epoch's samples of each active head's training loss."""
        xt, n, d = self.xt, self.xt.shape[0], self.xt.shape[1]
        dev, bs = xt.device, self.mb.bs
        perm = torch.randperm(n, generator=self.gen).to(dev)
        gh = len(h.idx)
        lr = self.lr_all[h.idx].view(1, gh, 1) * probe_lr_factor(self.config, epoch)
        decay = torch.ones(d + 1, gh, 1, device=dev)  # decoupled weight decay; on the bias row only
        rows = slice(None) if self.config.decay_bias else slice(0, d)  # with probe.decay_bias (timm AdamW)
        decay[rows] -= lr * self.wd_all[h.idx].view(1, gh, 1)
        total = torch.zeros(gh, device=dev)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            losses, ga = self.mb.logits_and_grad(xt, idx, self.shift, self.inv_sd, h, self.y[idx], self.multilabel)
            self.step += 1
            total += losses * len(idx)
            _adamw_step(h, ga, lr, decay, self.step, self.config)
        return total


@dataclass
class _Selection:
    """Per-head selection across epochs: best weights, loss and epoch, early stopping, curves."""

    best_wa: torch.Tensor
    best_loss: torch.Tensor
    best_epoch: torch.Tensor
    active: torch.Tensor
    last_train: torch.Tensor
    last_val: torch.Tensor
    curves: dict[str, list[list[float]]] = field(default_factory=lambda: {"train_loss": [], "val_loss": []})
    epochs_run: int = 0

    @classmethod
    def start(cls, wa0: torch.Tensor, g: int, dev: torch.device) -> "_Selection":
        return cls(wa0.clone(), torch.full((g,), math.inf, device=dev), torch.zeros(g, dtype=torch.long, device=dev),
                   torch.ones(g, dtype=torch.bool, device=dev), torch.full((g,), math.nan, device=dev),
                   torch.full((g,), math.nan, device=dev))

    def end_epoch(self, epoch: int, h: _Heads, train_loss: torch.Tensor, xva, y_val, multilabel: bool,
                  patience: int) -> str:
        """Record the epoch; keep improved heads, stop heads past ``patience``. Returns the progress note.

        Without validation data the latest epoch is "best" (ranked by nothing) and nothing stops.
        """
        with torch.no_grad():
            self.last_train[h.idx] = train_loss
            if xva is None:
                self.best_loss[h.idx] = train_loss
                self.best_epoch[h.idx] = epoch
                self.best_wa[:, h.idx] = h.wa
                info = f"train loss {float(train_loss.min()):.4f}"
            else:
                vl = _val_loss(h.wa, xva, y_val, multilabel)
                self.last_val[h.idx] = vl
                better = vl < self.best_loss[h.idx]
                if better.any():
                    hb = h.idx[better]
                    self.best_loss[hb] = vl[better]
                    self.best_epoch[hb] = epoch
                    self.best_wa[:, hb] = h.wa[:, better]
                self.active &= (epoch - self.best_epoch) < patience
                keep = self.active[h.idx]
                if not keep.all():  # drop stopped heads from the GEMMs
                    h.keep(keep)
                info = f"val loss {self.best_loss.min().item():.4f}"
        self.curves["train_loss"].append(self.last_train.tolist())
        self.curves["val_loss"].append(self.last_val.tolist())
        self.epochs_run = epoch + 1
        return info


def _selected(best_wa, best_loss, best_epoch, grid, mu, sd, d, multilabel, epochs_run, curves,
              has_val: bool) -> LinearProbe:
    """The head with the lowest validation loss (or the one head trained without validation
    data), folded back into raw feature space."""
    if not torch.isfinite(best_loss).any():
        raise FmevalError("every linear-probe configuration diverged (NaN validation loss).")
    k = int(torch.argmin(best_loss))
    w_std, b_std = best_wa[:d, k], best_wa[d, k]
    weight = w_std / sd[:, None]
    bias = b_std - mu @ weight
    table = [
        {"lr": lr_, "weight_decay": wd_, "val_loss": float(best_loss[i]) if has_val else math.nan,
         "best_epoch": int(best_epoch[i]) + 1}
        for i, (lr_, wd_) in enumerate(grid)
    ]
    return LinearProbe(
        weight=weight.detach(),
        bias=bias.detach(),
        multilabel=multilabel,
        lr=grid[k][0],
        weight_decay=grid[k][1],
        best_epoch=int(best_epoch[k]) + 1,  # 1-based; 0 = the unchanged initial head
        val_loss=float(best_loss[k]) if has_val else math.nan,
        epochs_run=epochs_run,
        grid=table,
        curves={
            "epoch": list(range(1, epochs_run + 1)),
            "train_loss": [row[k] for row in curves["train_loss"]],
            "val_loss": [row[k] for row in curves["val_loss"]],
        },
    )
