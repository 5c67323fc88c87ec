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

import torch
import torch.nn.functional as F

from fmeval.errors import ConfigError, FmevalError
from fmeval.validation import check_choice
from fmeval.progress import progress_bar


@dataclass(frozen=True)
class ProbeConfig:
    lrs: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    weight_decays: tuple[float, ...] = (0.0, 1e-4, 1e-3, 1e-2)
    epochs: int = 100
    batch_size: int = 1024
    patience: int = 10
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "constant"  # "constant" | "cosine-epoch" (timm's per-epoch cosine, MedMNIST+)

    def __post_init__(self) -> None:
        checks = {
            "--lr values must be > 0": all(v > 0 for v in self.lrs) and len(self.lrs) > 0,
            "--wd values must be >= 0": all(v >= 0 for v in self.weight_decays) and len(self.weight_decays) > 0,
            "--epochs must be >= 1": self.epochs >= 1,
            "--probe-batch-size must be >= 1": self.batch_size >= 1,
            "--patience must be >= 1": self.patience >= 1,
        }
        for msg, ok in checks.items():
            if not ok:
                raise ConfigError(msg + ".")
        check_choice(self.schedule, ("constant", "cosine-epoch"), "--probe-schedule", "probe schedule")

    def lr_factor(self, epoch: int) -> float:
        if self.schedule == "cosine-epoch":
            from fmeval.training.optim import cosine_epoch_factor

            return cosine_epoch_factor(epoch, self.epochs)
        return 1.0

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


def _loss_and_grad(
    logits: torch.Tensor, y: torch.Tensor, multilabel: bool, grad: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-head mean loss of logits [N, G, C] -> ([G], N * d(sum of losses)/d logits).

    The gradients of softmax cross-entropy and of BCE are closed-form, so a
    step needs no autograd graph. The returned gradient is *not* divided by N
    (the caller folds that into its GEMM).
    """
    n, g, c = logits.shape
    if multilabel:
        yf = y.float().unsqueeze(1)  # [N, 1, L]
        loss = F.binary_cross_entropy_with_logits(logits, yf.expand_as(logits), reduction="none")
        loss = loss.mean(dim=(0, 2))
        if not grad:
            return loss, None
        return loss, torch.sigmoid(logits).sub_(yf).div_(c)
    logp = torch.log_softmax(logits, dim=2)
    loss = -logp.gather(2, y.view(n, 1, 1).expand(n, g, 1)).squeeze(2).mean(0)
    if not grad:
        return loss, None
    onehot = F.one_hot(y, c).to(logp.dtype).unsqueeze(1)  # [N, 1, C]
    return loss, logp.exp_().sub_(onehot)  # softmax - onehot


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
) -> LinearProbe:
    """Train all grid heads; return the one with the lowest validation loss.

    ``y`` is int64 [N] (class index) or float/int [N, L] (multi-label).
    ``init_weight`` [C, D] (e.g. zero-shot text embeddings) starts every head
    from that classifier instead of zeros, and that unchanged classifier is a
    selection candidate itself (best epoch 0). Without validation data
    (``x_val`` None: a few-shot run with fixed hyper-parameters) the grid
    must be one head, which trains for all epochs and keeps the last. ``standardize``: train on
    features standardised with *training* statistics (folded back into the
    exported head); MedMNIST+'s probe trains on raw features.

    Performance notes: the G heads are one ``[D, G*C]`` matrix, so a step is
    two GEMMs (logits; weight gradient) around a closed-form loss gradient (no
    autograd), and the AdamW update is a handful of fused in-place kernels.
    Features are standardised per minibatch (no standardised copy of the
    training set). Heads that have early-stopped are dropped from the GEMMs:
    their weights were frozen anyway, so the result is unchanged (their curve
    entries repeat their last values).
    """
    dev = x_train.device
    has_val = x_val is not None
    if x_train.shape[0] == 0 or (has_val and x_val.shape[0] == 0):
        raise ConfigError("the linear probe needs non-empty train and validation splits.")
    if not has_val and len(config.grid()) != 1:
        raise ConfigError("without validation data the linear probe trains one head: give one --lr and one --wd.")
    for name, t in (("train", x_train), ("val", x_val)):
        if t is not None and not _all_finite(t):
            raise FmevalError(f"{name} features contain NaN/Inf; cannot train a probe.")
    y_train = y_train.to(dev)
    if not multilabel:
        y_train = y_train.long().view(-1)
    if has_val:
        y_val = y_val.to(dev)
        y_val = y_val if multilabel else y_val.long().view(-1)

    xt = x_train.float()  # no copy for float32 input
    if standardize:  # statistics of the *training* split only
        mu, sd = _mean_std(xt)
        sd = sd.clamp_min(1e-6)
    else:
        mu = torch.zeros(xt.shape[1], device=dev)
        sd = torch.ones(xt.shape[1], device=dev)
    inv_sd, shift = 1.0 / sd, -mu / sd  # standardise: x * inv_sd + shift
    xva = None
    if has_val:
        xva = torch.ones(x_val.shape[0], x_val.shape[1] + 1, device=dev)  # standardised val | 1
        torch.addcmul(shift, x_val.float().to(dev), inv_sd, out=xva[:, :-1])

    grid = config.grid()
    g, d, c = len(grid), xt.shape[1], n_outputs
    lr_all = torch.tensor([p[0] for p in grid], device=dev)
    wd_all = torch.tensor([p[1] for p in grid], device=dev)
    # every head's weights side by side: w [D, G, C], b [G, C]
    w_all = torch.zeros(d, g, c, device=dev)
    b_all = torch.zeros(g, c, device=dev)
    if init_weight is not None:
        w0 = init_weight.float().to(dev).T * sd[:, None]  # raw -> standardised space
        w_all += w0[:, None, :]
        b_all += (mu @ init_weight.float().to(dev).T).view(1, c)
    b1, b2 = config.betas

    best_loss = torch.full((g,), math.inf, device=dev)
    best_epoch = torch.zeros(g, dtype=torch.long, device=dev)
    # the bias is row D of the weights: x gets a constant-1 column, so one GEMM
    # gives the logits and one GEMM the gradients of weights and bias together
    wa_all = torch.cat([w_all, b_all.unsqueeze(0)])  # [D+1, G, C]
    best_wa = wa_all.clone()
    active = torch.ones(g, dtype=torch.bool, device=dev)
    # working set: the heads still training (compacted when some stop)
    heads = torch.arange(g, device=dev)
    wa = wa_all.clone()
    ma, va = torch.zeros_like(wa), torch.zeros_like(wa)
    last_train = torch.full((g,), math.nan, device=dev)
    last_val = torch.full((g,), math.nan, device=dev)
    if init_weight is not None and has_val:
        # The unchanged starting classifier (e.g. zero-shot) is a candidate too:
        # it is kept when no trained epoch of a head beats it on validation.
        with torch.no_grad():
            v0, _ = _loss_and_grad(
                torch.mm(xva, wa.view(d + 1, g * c)).view(-1, g, c), y_val, multilabel, grad=False
            )
        best_loss.copy_(v0)
        best_epoch.fill_(-1)

    gen = torch.Generator(device="cpu").manual_seed(seed)  # the run's seed: minibatch order
    n = xt.shape[0]
    bs = min(config.batch_size, n)
    xsel = torch.empty(bs, d, device=dev)
    xa = torch.ones(bs, d + 1, device=dev)  # standardised minibatch | 1
    step = 0
    curves: dict[str, list[list[float]]] = {"train_loss": [], "val_loss": []}
    epochs_run = 0
    with progress_bar(description, config.epochs, "ep") as tick:
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen).to(dev)
            gh = len(heads)
            lr = lr_all[heads].view(1, gh, 1) * config.lr_factor(epoch)
            decay = torch.ones(d + 1, gh, 1, device=dev)  # decoupled weight decay, not on the bias
            decay[:d] -= lr * wd_all[heads].view(1, gh, 1)
            total = torch.zeros(gh, device=dev)
            for start in range(0, n, bs):
                idx = perm[start : start + bs]
                nb = len(idx)
                torch.index_select(xt, 0, idx, out=xsel[:nb])
                torch.addcmul(shift, xsel[:nb], inv_sd, out=xa[:nb, :d])
                xb = xa[:nb]
                logits = torch.mm(xb, wa.view(d + 1, gh * c)).view(nb, gh, c)
                losses, gz = _loss_and_grad(logits, y_train[idx], multilabel)
                ga = torch.empty(d + 1, gh * c, device=dev)
                torch.addmm(ga, xb.T, gz.view(nb, gh * c), beta=0.0, alpha=1.0 / nb, out=ga)
                ga = ga.view(d + 1, gh, c)
                step += 1
                total += losses * nb
                bc1, bc2 = 1 - b1**step, 1 - b2**step
                # AdamW: p <- p * (1 - lr wd) - lr * (m / bc1) / (sqrt(v / bc2) + eps)
                ma.lerp_(ga, 1 - b1)
                va.mul_(b2).addcmul_(ga, ga, value=1 - b2)
                denom = va.sqrt().add_(config.eps * math.sqrt(bc2)).div_(lr * (math.sqrt(bc2) / bc1))
                wa.mul_(decay).addcdiv_(ma, denom, value=-1.0)
            with torch.no_grad():
                last_train[heads] = total / n
                if not has_val:  # keep the last epoch: "best" is simply the latest (ranked by nothing)
                    best_loss[heads] = total / n
                    best_epoch[heads] = epoch
                    best_wa[:, heads] = wa
                    curves["train_loss"].append(last_train.tolist())
                    curves["val_loss"].append(last_val.tolist())
                    epochs_run = epoch + 1
                    tick(1, info=f"train loss {float(total.min() / n):.4f}")
                    continue
                vl, _ = _loss_and_grad(
                    torch.mm(xva, wa.view(d + 1, gh * c)).view(-1, gh, c), y_val, multilabel, grad=False
                )
                last_val[heads] = vl
                better = vl < best_loss[heads]
                if better.any():
                    hb = heads[better]
                    best_loss[hb] = vl[better]
                    best_epoch[hb] = epoch
                    best_wa[:, hb] = wa[:, better]
                active &= (epoch - best_epoch) < config.patience
                keep = active[heads]
                if not keep.all():  # drop stopped heads from the GEMMs
                    heads = heads[keep]
                    wa = wa[:, keep].contiguous()
                    ma, va = ma[:, keep].contiguous(), va[:, keep].contiguous()
            curves["train_loss"].append(last_train.tolist())
            curves["val_loss"].append(last_val.tolist())
            epochs_run = epoch + 1
            tick(1, info=f"val loss {best_loss.min().item():.4f}")
            if not active.any():
                break

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
