"""Every command-line option, declared once, mapped to a RunConfig path.

An :class:`Opt` names its flag, type, range, help and the dotted config path
it sets. Commands list the option groups they take; :func:`command` builds
the Typer signature from the table, so each option is spelled, typed and
range-checked identically everywhere (a bad value is a usage error: usage
line, one red line, exit 2, before any work). Every option defaults to
``None`` so "given on the command line" is known exactly: that is what a
protocol treats as a deviation.
"""

from __future__ import annotations

import functools
import inspect
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.markup import escape

from fmeval.errors import ConfigError

LIST_KINDS = {"ints": int, "floats": float, "strs": str}


@dataclass(frozen=True)
class Opt:
    name: str  # python parameter name
    path: str | None  # RunConfig dotted path (None: handled by the command)
    type: type
    help: str
    flags: tuple[str, ...] = ()
    default_text: str | None = None  # shown in --help as the default
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min is exclusive (> rather than >=)
    list_of: str | None = None  # "ints" | "floats" | "strs": comma-separated values
    value: Any = None  # for flags that set a fixed value (e.g. --tiny -> True)

    def annotation(self) -> Any:
        # help is plain text: rich markup would eat "[env X; default Y]" as a tag
        kw: dict[str, Any] = {"help": escape(self.help), "show_default": self.default_text or False}
        if not self.list_of:  # list values and exclusive minimums are checked in convert()
            if self.min is not None and not self.min_open:
                kw["min"] = self.min
            if self.max is not None:
                kw["max"] = self.max
        t = str if self.list_of else self.type
        return Annotated[Optional[t], typer.Option(*self.flags, **kw)]

    def convert(self, raw: Any) -> Any:
        """CLI value -> config value (lists parsed, fixed-value flags expanded)."""
        if self.list_of:
            vals = parse_list(raw, self.flag, LIST_KINDS[self.list_of])
            for v in vals:
                self.check_range(v)
            return vals
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ConfigError(f"{self.flag} must be a finite number, got {raw}.")
        if self.min_open and self.min is not None and raw <= self.min:
            raise ConfigError(f"{self.flag} must be > {self.min:g}.")
        if isinstance(raw, Path):
            return str(raw.expanduser())
        return raw

    def check_range(self, v: Any) -> None:
        if not isinstance(v, (int, float)):
            return
        if not math.isfinite(v):
            raise ConfigError(f"{self.flag} values must be finite numbers, got {v}.")
        if self.min is not None and (v <= self.min if self.min_open else v < self.min):
            raise ConfigError(f"{self.flag} values must be {'>' if self.min_open else '>='} {self.min:g}, got {v:g}.")
        if self.max is not None and v > self.max:
            raise ConfigError(f"{self.flag} values must be <= {self.max:g}, got {v:g}.")

    @property
    def flag(self) -> str:
        return self.flags[0] if self.flags else "--" + self.name.replace("_", "-")


def parse_list(text: str, what: str, kind: type = int) -> tuple:
    """Comma-separated values of one kind (``--k 5,11,21``, ``--lr 1e-3,1e-2``)."""
    noun = {int: "integers", float: "numbers", str: "names"}[kind]
    try:
        vals = tuple(kind(v) for v in str(text).replace(" ", "").split(",") if v)
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated {noun}, got {text!r}.") from None
    if not vals:
        raise ConfigError(f"{what} is empty.")
    return vals


def _o(name, path, type_, help_, *flags, **kw) -> Opt:
    return Opt(name, path, type_, help_, tuple(flags), **kw)


# -- groups ---------------------------------------------------------------------
COMMON = (
    _o("model", "model", str, "Registered encoder (see `fmeval ls models`).", "--model", "-m"),
    _o("dataset", "dataset", str, "MedMNIST flag, e.g. pneumoniamnist (see `fmeval ls datasets`), or your own data: "
       "an image folder, a CSV/Parquet manifest or an npz with a card (README, \"Your own data\").", "--dataset", "-d"),
    _o("size", "size", int, "Image size of the MedMNIST(+) file: 28, 64, 128 or 224 (3D: 28, 64); your own data: "
       "the square side images are resized to.",
       default_text="28", min=1),
    _o("protocol", "protocol", str, "Named protocol that fixes every setting it defines (see `fmeval protocols ls`); "
       "options given explicitly override it and are recorded as deviations."),
    _o("data_root", "data_root", Path, "Folder with the npz files [env FMEVAL_DATA_ROOT; default ~/.medmnist].",
       "--data-root"),
    _o("download", "download", bool, "Download a missing npz through medmnist (needs a network).", "--download",
       value=True),
    _o("md5", "md5", str, "MD5 check against the official file: warn, strict or off.", default_text="warn"),
    # user datasets (fmeval.data.sources)
    _o("split_ratios", "split_ratios", str, "Your own data: train,val,test shares of the splits fmeval draws where the data "
       "gives none.", "--split-ratios", default_text="0.7,0.1,0.2", min=0.0, max=1.0, list_of="floats"),
    _o("group_by", "group_by", str, "Your own data: manifest column (e.g. patient id) whose groups never straddle "
       "two drawn splits.", "--group-by"),
    _o("split_seed", "split_seed", int, "Your own data: seed of the drawn splits.", "--split-seed",
       default_text="0", min=0),
    _o("strict_leakage", "strict_leakage", bool, "Your own data: refuse images pixel-identical across splits "
       "(default: warn and count them).", "--strict-leakage", value=True),
    _o("limit", "limit", int, "Use at most N random samples per split (quick looks; kept off the ranking).", min=1),
    _o("volume_view", "volume_view", str, "3D datasets with a 2D encoder: slices and pooling, e.g. axial/mean, "
       "tri-planar/mean, tri-planar/mean+max, all:axial/max, strided:4:axial/mean.", "--volume-view"),
    _o("geometry", "geometry", str, "resize: scale to the encoder input; pad: centre on a --canvas (MedMNIST+).",
       default_text="resize"),
    _o("canvas", "canvas", int, "Canvas side for --geometry pad.", default_text="224", min=8),
    _o("pad_fill", "pad_fill", str, "Pad fill: mean (mean colour = 0 after normalising, MedMNIST+) or zero (black, MedCLIP).",
       "--pad-fill", default_text="mean"),
    _o("interpolation", "interpolation", str, "Resize interpolation: bilinear, bicubic or nearest [default: the encoder's].",
       "--interpolation"),
    _o("norm", "norm", str, "Normalisation: model (the encoder's own mean/std), half (0.5/0.5) or imagenet.",
       default_text="model"),
    _o("input_size", "input_size", int, "Encoder input resolution [default: the encoder's; 224 for DINOv2; the canvas with pad].",
       "--input-size", min=8),
    _o("tiny", "tiny", bool, "Random-init tiny config of the same architecture (offline tests, smoke runs).",
       "--tiny", value=True),
    _o("random_init", None, bool, "Full-size architecture with random weights (no download).", "--random-init",
       value=True),
    _o("weights", "weights", str, "Local checkpoint (path) or a fetched asset name (`fmeval weights ls`)."),
    _o("strict", "strict", bool, "Fail when checkpoint keys or shapes do not match the model.", "--strict/--no-strict",
       default_text="strict"),
    _o("allow_partial", "allow_partial", bool, "With --no-strict, accept a checkpoint that loads only part of the model.",
       "--allow-partial", value=True),
    _o("pool", "pool", str, "Which output is the feature where a model offers several (hf: cls, mean, pooler, "
       "embed; timm: its global_pool, e.g. avg, max, token) [default: the model's; see `fmeval models show`].",
       "--pool"),
    _o("mean", "mean", str, "Your own model (file.py:factory, plugin): per-channel mean of its input "
       "normalisation, R,G,B [default: the module's `mean` attribute].", "--mean", list_of="floats"),
    _o("std", "std", str, "Your own model: per-channel std of its input normalisation, R,G,B [default: the "
       "module's `std` attribute].", "--std", list_of="floats"),
    _o("precision", "precision", str, "auto, fp32 or bf16 (auto: bf16 where the hardware and the family's measured "
       "fidelity allow) [env FMEVAL_PRECISION].", default_text="auto"),
    _o("seed", "seed", int, "Seed for random weights, subsets, training and bootstrap.", default_text="0", min=0),
    _o("batch_size", "batch_size", int, "Batch size of feature extraction / inference (halved on out-of-memory).",
       "--batch-size", default_text="256", min=1),
    _o("device", "device", str, "auto, cpu, cuda or cuda:N [env FMEVAL_DEVICE].", default_text="auto"),
    _o("no_cache", None, bool, "Recompute features instead of using the feature cache.", "--no-cache", value=True),
    _o("bootstrap", "n_boot", int, "Bootstrap resamples for the 95% CIs (0: none).", "--bootstrap",
       default_text="1000", min=0),
    _o("reports_dir", "reports_dir", Path, "Where reports go [env FMEVAL_REPORTS_DIR; default ./reports].",
       "--reports-dir"),
    # experiment tracking (fmeval.tracking): where the run is mirrored, never part of its config
    _o("track", None, str, "Mirror the run to experiment trackers: wandb, mlflow, tensorboard (comma-separated; "
       "local stores under <reports>/tracking; none: off) [env FMEVAL_TRACK; default: none].",
       "--track", list_of="strs"),
)

KNN = (
    _o("k", "knn.ks", str, "Comma-separated k values, swept in one pass; the best on validation is reported.",
       default_text="1,5,11,20,50", min=1, list_of="ints"),
    _o("rule", "knn.rule", str, "cosine (DINOv2 weighted votes) or euclidean-majority (MedMNIST+, k=11).",
       default_text="cosine"),
    _o("temperature", "knn.temperature", float, "Temperature of the cosine vote weights exp(sim/T).",
       default_text="0.07", min=0.0, min_open=True),
    _o("select_metric", "knn.select_metric", str, "Validation metric that picks k.", "--select-metric",
       default_text="auc"),
)

PROMPTS = (
    _o("prompts", "zeroshot.prompts", str, "Prompt bank: a YAML path or a shipped bank name, e.g. pneumonia or "
       "pneumonia.yaml [default: the dataset's bank].", "--prompts", "-p"),
    _o("style", "zeroshot.style", str, "Prompt style of the bank [default: the bank's default_style]."),
)
ZEROSHOT = PROMPTS + (
    _o("ensemble", "zeroshot.ensemble", str, "mean-embedding (CLIP), mean-logit (MedCLIP ensemble) or max-logit.",
       default_text="mean-embedding"),
    _o("text_batch_size", "zeroshot.text_batch_size", int, "Prompts per text-encoder call.", "--text-batch-size",
       default_text="256", min=1),
)
COMPARE = (
    _o("styles", "zeroshot.styles", str, "Comma-separated styles [default: all].", list_of="strs"),
    _o("per_template", "zeroshot.per_template", bool, "Also score every single template on its own.",
       "--per-template", value=True),
    _o("test_all", "zeroshot.test_all", bool, "Also report every style's TEST metrics, with paired bootstrap CIs "
       "against the style chosen on validation.", "--test-all", value=True),
)

LINPROBE = PROMPTS + (
    _o("lr", "probe.lrs", str, "Learning rates of the grid (comma-separated).", default_text="0.001,0.01,0.1",
       min=0.0, min_open=True, list_of="floats"),
    _o("wd", "probe.weight_decays", str, "Weight decays of the grid (comma-separated).",
       default_text="0,0.0001,0.001,0.01", min=0.0, list_of="floats"),
    _o("epochs", "probe.epochs", int, "Maximum epochs (early stopping on validation loss).", default_text="100", min=1),
    _o("patience", "probe.patience", int, "Epochs without validation improvement before a head stops.",
       default_text="10", min=1),
    _o("probe_batch_size", "probe.batch_size", int, "Minibatch size of probe training.", "--probe-batch-size",
       default_text="1024", min=1),
    _o("probe_schedule", "probe.schedule", str, "constant, or cosine-epoch (timm's per-epoch cosine, the MedMNIST+ code).", "--probe-schedule",
       default_text="constant"),
    _o("init", "linprobe.init", str, "zeros, or zeroshot: start from the prompt bank's zero-shot classifier "
       "(needs --feature-norm l2).", default_text="zeros"),
    _o("feature_norm", "linprobe.feature_norm", str, "standardize (train statistics), l2 or none.",
       "--feature-norm", default_text="standardize"),
    _o("probe_backbone", "linprobe.backbone", str, "eval (cached eval-mode features), or train: the frozen "
       "backbone runs in train() mode while the head trains, as the MedMNIST+ reference (no feature cache; "
       "needs --feature-norm none).", "--probe-backbone", default_text="eval"),
)

FINETUNE = (
    _o("lora", None, bool, "LoRA (peft) on the encoder's attention/conv layers + a linear head.", "--lora", value=True),
    _o("full", None, bool, "Full fine-tuning: every backbone parameter + a linear head.", "--full", value=True),
    _o("epochs", "train.epochs", int, "Maximum epochs.", default_text="100", min=1),
    _o("lr", "train.lr", float, "Peak learning rate.", default_text="1e-4", min=0.0, min_open=True),
    _o("optimizer", "train.optimizer", str, "adamw or adam.", default_text="adamw"),
    _o("weight_decay", "train.weight_decay", float, "Weight decay on weight matrices (not biases/norms).",
       "--weight-decay", default_text="0.01", min=0.0),
    _o("decay_scope", "train.decay_scope", str, "Weight decay on weight matrices only, or on all parameters.",
       "--decay-scope", default_text="matrices"),
    _o("train_batch_size", "train.batch_size", int, "Training minibatch size.", "--train-batch-size",
       default_text="64", min=1),
    _o("accum_steps", "train.accum_steps", int, "Gradient accumulation: minibatches per optimiser step "
       "(effective batch = train batch x accum steps).", "--accum-steps", default_text="1", min=1),
    _o("schedule", "train.schedule", str, "cosine (per step, after --warmup-epochs), cosine-epoch (timm's "
       "per-epoch cosine, MedMNIST+), multistep (MedMNIST v2) or constant.", default_text="cosine"),
    _o("warmup_epochs", "train.warmup_epochs", float, "Linear LR warm-up length in epochs.", "--warmup-epochs",
       default_text="1.0", min=0.0),
    _o("milestones", "train.milestones", str, "multistep: comma-separated epochs at which the LR is x --gamma.",
       min=1, list_of="ints"),
    _o("gamma", "train.gamma", float, "multistep decay factor.", default_text="0.1", min=0.0, min_open=True, max=1.0),
    _o("patience", "train.patience", int, "Early stopping: epochs without validation-loss improvement (0 = off).",
       default_text="5", min=0),
    _o("select_metric", "train.select_metric", str, "Validation metric that picks the best epoch (or loss).",
       "--select-metric", default_text="auc"),
    _o("lora_r", "lora.r", int, "LoRA rank.", "--lora-r", default_text="8", min=1),
    _o("lora_alpha", "lora.alpha", float, "LoRA alpha (scaling = alpha / r).", "--lora-alpha", default_text="16",
       min=0.0, min_open=True),
    _o("lora_dropout", "lora.dropout", float, "Dropout on the LoRA branch.", "--lora-dropout", default_text="0.1",
       min=0.0, max=0.99),
    _o("lora_targets", "lora.targets", str, "Comma-separated module names (or name suffixes) LoRA wraps, "
       "replacing the model's own choice (see `fmeval models show`).", "--lora-targets", list_of="strs"),
    _o("layer_decay", "train.layer_decay", float, "Layer-wise LR decay, e.g. 0.75 (full fine-tuning).",
       "--layer-decay", min=0.0, min_open=True, max=1.0),
    _o("pos_weight", "train.pos_weight", float, "Positive-class loss weight (multi-label BCE; binary: class 1).",
       "--pos-weight", min=0.0, min_open=True),
    _o("class_weights", "train.class_weights", str, "'balanced': inverse-frequency class weights from the training labels.",
       "--class-weights"),
    _o("sampler", "train.sampler", str, "shuffle, or balanced (class-balanced sampling).", default_text="shuffle"),
    _o("augment", "train.augment", bool, "Light augmentation (flip where the dataset allows it, shift without wrap).",
       "--augment", value=True),
    _o("max_steps_per_epoch", "train.max_steps_per_epoch", int, "Cap on minibatches per epoch (quick looks).",
       "--max-steps-per-epoch", min=1),
    _o("resume", "resume", Path, "Run folder (adapters/<run>) of an interrupted run to continue, with its own options."),
)

# Multi-domain training (issue 24): one backbone, one head per dataset (fmeval.modes.multidomain).
MULTIDOMAIN = (
    _o("datasets", "multidomain.datasets", str, "Multi-domain training: train one backbone with one linear head per "
       "dataset on all of these at once (comma-separated, or all-2d for the 12 2D MedMNIST+ datasets); one "
       "report per dataset. Instead of --dataset.", "--datasets", list_of="strs"),
    _o("domain_weights", "multidomain.domain_weights", str, "Multi-domain: 'size' weighs each dataset's loss by "
       "n_batches(smallest) / n_batches(dataset), on train and validation loss (mm-PT 'weighted').",
       "--domain-weights"),
    _o("domain_bn", "multidomain.domain_bn", bool, "Multi-domain, --full: separate BatchNorm running statistics per "
       "dataset (shared affine weights).", "--domain-bn", value=True),
    _o("ordinal_loss", "multidomain.ordinal_loss", str, "Multi-domain: loss of ordinal datasets (RetinaMNIST): 'sord' "
       "(soft ordinal labels softmax(-(i-y)^2), Diaz & Marathe 2019) [default: cross-entropy over the grades].",
       "--ordinal-loss"),
)

# Few-shot (knn, linprobe, finetune): --shots/--draws expand into one run per (K, draw) (fmeval.cli.fewshot).
FEWSHOT = (
    _o("shots", None, str, "Few-shot: K labelled training images per class (comma-separated K values: one run per "
       "K and draw, then a few-shot summary). Episodes are seeded: the same images for every model and mode.",
       min=1, list_of="ints"),
    _o("draws", None, int, "Few-shot: episodes (draws) per K.", default_text="1", min=1),
    _o("fewshot_selection", "fewshot.selection", str, "Few-shot selection: fixed (first --k / one --lr,--wd head / "
       "last epoch; no validation data), kshot-val (a K-shot validation draw) or full-val (the full validation "
       "split).", "--fewshot-selection", default_text="fixed"),
)

ROBUSTNESS = (
    _o("corruptions", "robustness.corruptions", str, "MedMNIST-C corruptions (comma-separated) [default: every "
       "corruption of the dataset].", list_of="strs"),
    _o("severities", "robustness.severities", str, "Severities (comma-separated, 1..5).", default_text="1,2,3,4,5",
       min=1, max=5, list_of="ints"),
    _o("head", "robustness.head", str, "Frozen-feature head trained on clean train/val: knn, linprobe or zeroshot.",
       default_text="linprobe"),
)

_SCORE_COMMON = ("dataset", "size", "data_root", "download", "md5", "seed", "bootstrap", "reports_dir",
                 "split_ratios", "group_by", "split_seed", "strict_leakage")
SCORE = tuple(o for o in COMMON if o.name in _SCORE_COMMON) + (
    _o("split", "score.split", str, "Split the predictions are for: test or val.", default_text="test"),
)


def command(*groups: tuple[Opt, ...]) -> Callable:
    """Give a command ``fn(opts: dict[name, value given], **own)`` the options of ``groups``.

    The wrapper exposes every option in its signature (Typer reads it) and
    passes the ones the user gave - and only those - as ``opts``.
    """

    def deco(fn: Callable) -> Callable:
        table: dict[str, Opt] = {}
        for group in groups:
            for o in group:
                table[o.name] = o
        hints = typing.get_type_hints(fn, include_extras=True)
        own = [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(fn).parameters.values())[1:]]
        params = own + [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=o.annotation(),
                                          default=None) for o in table.values()]

        @functools.wraps(fn)
        def wrapper(**kwargs):
            given = {name: kwargs.pop(name) for name in table if kwargs.get(name) is not None}
            kwargs.pop("__table__", None)
            for name in list(table):
                kwargs.pop(name, None)
            if "track" in given:  # --track: every run of this command is tracked (fmeval.tracking)
                from fmeval.tracking import requested

                with requested(given["track"]):
                    return fn(Given(given, table), **kwargs)
            return fn(Given(given, table), **kwargs)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.fmeval_options = dict(table)  # type: ignore[attr-defined]  # what the CLI tests fuzz
        return wrapper

    return deco


class Given:
    """The options a user typed, and how they map onto config paths."""

    def __init__(self, values: dict[str, Any], table: dict[str, Opt]) -> None:
        self.values = values
        self.table = table

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def explicit(self) -> dict[str, Any]:
        """Config path -> value for every option given (special flags expanded)."""
        out: dict[str, Any] = {}
        for name, raw in self.values.items():
            o = self.table[name]
            if name == "random_init" and raw:
                out["pretrained"] = False
            elif name == "no_cache" and raw:
                out["use_cache"] = False
            elif name == "tiny" and raw:
                out["tiny"] = True
                out["pretrained"] = False
            elif o.path is not None:
                out[o.path] = o.convert(raw)
        return out
