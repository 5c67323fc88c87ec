"""The typed settings sections a :class:`~fmeval.config.RunConfig` holds, one per mode family.

They live beside the config (not beside the code they configure) so the config is a leaf:
protocols, studies and the CLI build and check them without importing torch or a trainer.
Each checks its own ranges on construction; names that must be one of a registry are
checked by :mod:`fmeval.validation` once the whole config is known.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fmeval.errors import ConfigError, check_choice

_MODULE_NAME = re.compile(r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$")  # a torch module's dotted name


@dataclass(frozen=True)
class KnnSettings:
    ks: tuple[int, ...] = (1, 5, 11, 20, 50)
    rule: str = "cosine"  # a key of probes.knn.KNN_RULES
    temperature: float = 0.07  # cosine vote weights exp(sim / T) (DINOv2)
    select_metric: str = "auc"  # validation metric that picks k

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError("--k values must be >= 1.")
        if not self.temperature > 0:
            raise ConfigError("--temperature must be > 0.")


@dataclass(frozen=True)
class ZeroshotSettings:
    prompts: str | None = None  # bank path or shipped name; None: the dataset's bank
    style: str | None = None  # None: the bank's default style
    ensemble: str = "mean-embedding"  # a key of zeroshot.ENSEMBLES
    text_batch_size: int = 256
    styles: tuple[str, ...] | None = None  # prompts-compare: None = every style
    per_template: bool = False  # prompts-compare: also each single template
    test_all: bool = False  # prompts-compare: test metrics of every style (paired CIs)

    def __post_init__(self) -> None:
        if self.text_batch_size < 1:
            raise ConfigError("--text-batch-size must be >= 1.")


@dataclass(frozen=True)
class LinprobeSettings:
    init: str = "zeros"  # "zeros" | "zeroshot" (start from the prompt bank's classifier)
    feature_norm: str = "standardize"  # "standardize" | "l2" | "none"
    # "eval": the head trains on cached eval-mode features. "train": the MedMNIST+ reference's
    # probe - the frozen backbone runs in train() mode while the head trains (BatchNorm running
    # statistics adapt to the dataset, dropout stays on), so features change every batch and
    # cannot be cached (fmeval.modes.linprobe_train).
    backbone: str = "eval"

    def __post_init__(self) -> None:
        check_choice(self.init, ("zeros", "zeroshot"), "--init", "probe initialisation")
        check_choice(self.feature_norm, ("standardize", "l2", "none"), "--feature-norm", "feature normalisation")
        check_choice(self.backbone, ("eval", "train"), "--probe-backbone", "probe backbone mode")
        if self.init == "zeroshot" and self.feature_norm != "l2":
            raise ConfigError(
                "--init zeroshot needs --feature-norm l2: the zero-shot classifier is linear in "
                "L2-normalised image features (use --feature-norm l2 for the zeros baseline too)."
            )

    def check_train_backbone(self) -> None:
        """Checked when a linear probe runs (a protocol sets ``backbone`` per model, for every mode)."""
        if self.backbone == "train" and (self.feature_norm != "none" or self.init != "zeros"):
            raise ConfigError(
                "--probe-backbone train needs --feature-norm none and --init zeros: the features change "
                "with every batch (train-mode BatchNorm/dropout), so there are no fixed statistics to "
                "normalise with."
            )


@dataclass(frozen=True)
class FewShotSettings:
    shots: int | None = None  # K training samples per class; None = the full training split
    draw: int = 0  # which seeded episode
    selection: str = "fixed"  # "fixed" hyper-parameters | "kshot-val" | "full-val"
    # Linear probe: below this K, "standardize" uses L2-normalised features instead (a K-shot
    # episode's own mean/std collapse the probe at tiny K); 0 keeps standardising at every K.
    standardize_min_shots: int = 16

    def __post_init__(self) -> None:
        if self.standardize_min_shots < 0:
            raise ConfigError("fewshot.standardize_min_shots must be >= 0.")
        if self.shots is not None and self.shots < 1:
            raise ConfigError("--shots must be >= 1.")
        if self.draw < 0:
            raise ConfigError("--draws must be >= 1.")
        if self.selection not in ("fixed", "kshot-val", "full-val"):
            raise ConfigError(f"few-shot selection must be fixed, kshot-val or full-val, not {self.selection!r}.")


@dataclass(frozen=True)
class RobustnessSettings:
    """``fmeval robustness``: which MedMNIST-C corruptions, at which severities, through which head."""

    corruptions: tuple[str, ...] | None = None  # None: every MedMNIST-C corruption of the dataset
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    head: str = "linprobe"  # a robustness head (fmeval.modes.robustness): knn | linprobe | zeroshot
    adapter: str | None = None  # a fine-tuned run folder (adapters/<run>) instead of a frozen head

    def __post_init__(self) -> None:
        if not self.severities or any(s not in (1, 2, 3, 4, 5) for s in self.severities):
            raise ConfigError(f"--severities must be values in 1..5, got {list(self.severities)}.")
        if len(set(self.severities)) != len(self.severities):
            raise ConfigError(f"--severities lists a value twice: {list(self.severities)}.")
        if self.corruptions is not None and len(set(self.corruptions)) != len(self.corruptions):
            raise ConfigError(f"--corruptions lists a name twice: {', '.join(self.corruptions)}.")


@dataclass(frozen=True)
class ScoreSettings:
    """``fmeval score``: an external model's predictions file and the split it scores."""

    predictions: str | None = None  # CSV of per-sample class probabilities (fmeval.predictions)
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ConfigError(f"--split must be test or val, not {self.split!r}.")


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters. The defaults resemble the MedMNIST+ recipe (AdamW, lr 1e-4,
    batch 64, up to 100 epochs, patience 5) but are NOT it: they warm up for one epoch, step a
    cosine per optimiser step, decay matrices only and select by validation AUC, where the
    reference steps a timm cosine per epoch, decays every parameter and selects by validation
    loss. Only ``--protocol medmnist-plus`` (``fmeval protocols show``) sets the recipe."""

    epochs: int = 100
    lr: float = 1e-4
    optimizer: str = "adamw"  # a key of training.optim.OPTIMIZERS
    weight_decay: float = 0.01  # torch's AdamW default
    decay_scope: str = "matrices"  # "matrices" (timm/ViT recipes) | "all" (a plain optimizer over model.parameters())
    batch_size: int = 64
    accum_steps: int = 1  # minibatches per optimiser step: effective batch = batch_size * accum_steps
    schedule: str = "cosine"  # a key of training.optim.SCHEDULES
    warmup_epochs: float = 1.0
    milestones: tuple[int, ...] = ()  # multistep: epochs at which the LR is multiplied by gamma
    gamma: float = 0.1
    patience: int = 5  # epochs without val-loss improvement; 0 disables early stopping
    select_metric: str = "auc"  # a metric name, or "loss" (the training loss on val)
    pos_weight: float | None = None
    class_weights: str | None = None  # None | "balanced"
    sampler: str = "shuffle"  # "shuffle" | "balanced" (class-balanced sampling)
    # the new head: "model" = the model's own classifier init where it has one (timm's, as the MedMNIST+
    # reference), else PyTorch's nn.Linear default; "torch" = always nn.Linear's default (what runs recorded before 2026-12-06 used)
    head_init: str = "model"
    augment: bool = False
    layer_decay: float | None = None
    max_steps_per_epoch: int | None = None  # cap on minibatches per epoch (quick looks)

    def validate(self) -> None:
        """Ranges and fixed choices; the registry names (optimizer, schedule, metric, class
        weights) are checked with every other named choice by ``fmeval.validation``."""
        checks = {
            "--epochs must be >= 1": self.epochs >= 1,
            "--lr must be > 0": self.lr > 0,
            "--weight-decay must be >= 0": self.weight_decay >= 0,
            "--train-batch-size must be >= 1": self.batch_size >= 1,
            "--accum-steps must be >= 1": self.accum_steps >= 1,
            "--warmup-epochs must be >= 0": self.warmup_epochs >= 0,
            "--patience must be >= 0": self.patience >= 0,
            "--gamma must be in (0, 1]": 0 < self.gamma <= 1,
            "--milestones must be positive epochs": all(m >= 1 for m in self.milestones),
            "--max-steps-per-epoch must be >= 1":
                self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
            "--pos-weight must be > 0": self.pos_weight is None or self.pos_weight > 0,
        }
        for msg, ok in checks.items():
            if not ok:
                raise ConfigError(msg + ".")
        check_choice(self.sampler, ("shuffle", "balanced"), "--sampler", "sampler")
        check_choice(self.head_init, ("model", "torch"), "train.head_init", "head initialisation")
        check_choice(self.decay_scope, ("matrices", "all"), "--decay-scope", "weight-decay scope")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accum_steps


# -- multi-domain training (issue 24) -------------------------------------------------
DOMAIN_WEIGHTS = ("size",)  # None: unweighted; "size": n_batches(smallest) / n_batches(d)
ORDINAL_LOSSES = ("sord",)  # None: ordinal grades as plain classes (cross-entropy)


@dataclass(frozen=True)
class MultiDomainSettings:
    """One shared backbone trained on several datasets at once (mm-PT, ``fmeval finetune
    --datasets``); one linear head per dataset. Every field off by default, so the section
    leaves every other run's config, hash and resume check unchanged."""

    datasets: tuple[str, ...] = ()  # the set trained together, sorted (order never matters; the run's dataset is one)
    domain_weights: str | None = None  # None | "size"
    domain_bn: bool = False  # per-dataset BatchNorm running statistics
    ordinal_loss: str | None = None  # None | "sord" (soft ordinal labels, Diaz & Marathe 2019)

    def __post_init__(self) -> None:
        names = [str(d) for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"--datasets lists a dataset twice: {','.join(names)}.")
        object.__setattr__(self, "datasets", tuple(sorted(names)))  # one set, one config hash
        if self.domain_weights is not None:
            check_choice(self.domain_weights, DOMAIN_WEIGHTS, "--domain-weights", "domain loss weighting")
        if self.ordinal_loss is not None:
            check_choice(self.ordinal_loss, ORDINAL_LOSSES, "--ordinal-loss", "ordinal loss")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyper-parameters (rank 8, scaling alpha/r = 2 as in common ViT recipes)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    # --lora-targets: module names/suffixes that replace the model's own choice
    targets: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ConfigError("--lora-r must be >= 1.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("--lora-dropout must be in [0, 1).")
        for t in self.targets or ():
            # torch module names are dotted attribute names: anything else can never match
            if not _MODULE_NAME.match(str(t)):
                raise ConfigError(f"--lora-targets: {t!r} is not a module name (dotted names such as "
                                  "attn.qkv or blocks.0.attn).")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))


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
    # Decoupled weight decay on the bias too (timm's AdamW over model.parameters(), the MedMNIST+
    # recipe); False: weights only (DINOv2-style linear evaluation).
    decay_bias: bool = False

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

    def grid(self) -> list[tuple[float, float]]:
        return [(lr, wd) for lr in self.lrs for wd in self.weight_decays]
