"""Multi-domain modes (``multidomain-full``, ``multidomain-lora``): one backbone for several datasets.

A multi-domain run trains once and reports once per dataset. Its config names
the whole set (``multidomain.datasets``) and, like every run, one ``dataset``:
the one this call reports. :func:`run_multidomain` trains (or resumes, or finds
finished) the shared model in its run folder - the same folder for every
dataset of the set, so the training happens once - then scores its own dataset
through the ordinary result builder (test metrics, CIs, majority baseline). The
command line (``fmeval finetune --datasets``) and a study's cells call it once
per dataset; each report carries ``extras["multidomain"]["run_id"]``, the run
folder's name, so the per-dataset runs are known to come from one model while
the leaderboard and studies rank each on its own dataset.

The training lock (an ``flock`` on the run folder, dropped by the kernel when its
holder dies) makes concurrent cells of one study wait for the one that trains
instead of training twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from fmeval import pipeline
from fmeval.config import RunConfig
from fmeval.data import MedMNIST
from fmeval.data.augment import augment_policy
from fmeval.device import use_channels_last
from fmeval.errors import ConfigError
from fmeval.io import file_lock, new_run_id
from fmeval.modes.base import Timer, register_mode, result_of
from fmeval.modes.finetune import _resume_hint, _stop_hook, resume_hints, scores_digest, seeded_init
from fmeval.pipeline import Prepared
from fmeval.progress import console as progress_console
from fmeval.settings import adapters_root
from fmeval.training.checkpoint import check_resume, load_train_state, read_run_record, write_run_record
from fmeval.training.hooks import TrainHooks, with_trackers
from fmeval.training.lora import count_parameters
from fmeval.training.loop import RunSetup, predict
from fmeval.training.methods import METHODS
from fmeval.training.multidomain import Domain, MultiHeadClassifier, fit_multidomain, head_key

PREFIX = "multidomain-"
LOCK_FILE = "train.lock"


ALL_2D = "all-2d"


def expand_datasets(names) -> tuple[str, ...]:
    """``--datasets`` as typed -> dataset names (``all-2d``: the 12 2D MedMNIST+ datasets)."""
    from fmeval.data.info import flags_2d

    out: list[str] = []
    for name in names:
        out += flags_2d() if str(name).lower() == ALL_2D else [str(name)]
    return tuple(out)


def method_of(cfg: RunConfig) -> str:
    return cfg.mode.removeprefix(PREFIX)


def training_config(cfg: RunConfig) -> RunConfig:
    """The config the shared training is keyed by: the run's, reporting the set's first dataset."""
    return cfg.with_values({"dataset": cfg.multidomain.datasets[0]})


def check_multidomain(cfg: RunConfig) -> None:
    """What a multi-domain config must satisfy, before any data is read."""
    md = cfg.multidomain
    if len(md.datasets) < 2:
        raise ConfigError("multi-domain training needs at least two datasets (--datasets d1,d2,... or all-2d); "
                          "for one dataset use --dataset.")
    if cfg.dataset not in md.datasets:
        raise ConfigError(f"dataset {cfg.dataset} is not one of the run's --datasets ({','.join(md.datasets)}).")
    if cfg.fewshot.shots is not None:
        raise ConfigError("--shots does not apply to multi-domain training.")
    if cfg.train.accum_steps != 1:
        raise ConfigError("multi-domain training takes one dataset per optimiser step: --accum-steps must be 1.")
    if md.domain_bn and method_of(cfg) == "lora":
        raise ConfigError("--domain-bn needs --full: LoRA keeps the backbone's BatchNorm statistics frozen.")
    cfg.train.validate()


def _check_2d(data: MedMNIST) -> None:
    if data.info.is_volume:
        raise ConfigError(f"{data.flag} holds 3D volumes; multi-domain training takes 2D datasets.")


@dataclass
class Trained:
    """The shared model of a run folder, with the per-dataset data it was trained on."""

    run_dir: Path
    digest: str
    model: MultiHeadClassifier
    prepared: dict[str, Prepared]  # flag -> the pipeline's rows of that dataset
    setup: RunSetup
    scores: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # flag -> val/test scores, once


_LAST: Trained | None = None  # the model this process trained last: its datasets are scored without a reload


def run_folder(cfg: RunConfig) -> Path:
    folder = cfg.resume or cfg.adapter_dir
    if folder:
        path = Path(folder).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    from fmeval.report import check_writable

    check_writable(adapters_root(), "adapters folder")
    path = adapters_root() / new_run_id(cfg.mode, cfg.model, f"{len(cfg.multidomain.datasets)}-datasets", cfg.size)
    path.mkdir(parents=True, exist_ok=False)
    return path


def _prepare_all(tcfg: RunConfig, *, train_method: bool) -> tuple[MultiHeadClassifier, dict[str, Prepared], RunSetup]:
    """Every dataset of the set (all validated before the encoder is built), one encoder, the model."""
    flags = tcfg.multidomain.datasets
    for flag in flags:
        data = pipeline.open_data(tcfg.with_values({"dataset": flag}))
        _check_2d(data)
        pipeline.check_dimensions(tcfg, data)
    method = METHODS.get(method_of(tcfg))
    prepared: dict[str, Prepared] = {}
    adapter = None
    for flag in flags:
        p = pipeline.prepare(tcfg.with_values({"dataset": flag}), frozen=False, check=_check_2d, adapter=adapter)
        adapter = p.adapter
        prepared[flag] = p
    first = prepared[flags[0]]
    for flag, p in prepared.items():
        if p.transform.as_dict() != first.transform.as_dict():
            raise ConfigError(f"{flag} needs another input pipeline than {flags[0]}; "
                              "the datasets of a multi-domain run must share one (same --size).")
    outputs = {head_key(p.data.flag): p.data.info.n_classes for p in prepared.values()}
    if len(outputs) != len(prepared):
        raise ConfigError("two datasets of --datasets map to the same head name; rename one.")
    with seeded_init(tcfg, method, adapter, train_method=train_method):
        model = MultiHeadClassifier(adapter, outputs, domain_bn=tcfg.multidomain.domain_bn).to(first.device)
    setup = RunSetup(transform=first.transform, device=first.device, precision=first.precision,
                     channels_last=use_channels_last(adapter.family, first.device, first.precision),
                     eval_batch_size=tcfg.batch_size)
    return model, prepared, setup


def _domains(prepared: dict[str, Prepared]) -> list[Domain]:
    return [Domain(head_key(p.data.flag), p.data.flag, p.data.task, p.data.info.n_classes,
                   p.images["train"], p.labels["train"], p.images["val"], p.labels["val"],
                   augment=augment_policy(p.data.flag))
            for p in prepared.values()]


def _params(model: MultiHeadClassifier) -> dict:
    t_b, n_b = count_parameters(model.backbone)
    t_h, n_h = count_parameters(model.head)
    return {"trainable": t_b + t_h, "total": n_b + n_h, "trainable_fraction": (t_b + t_h) / max(n_b + n_h, 1)}


def _train(cfg: RunConfig, tcfg: RunConfig, run_dir: Path, rec: dict | None, on_epoch_end,
           hooks: TrainHooks | None) -> Trained:
    """Train (or resume) the shared model in ``run_dir``; writes run.json before and after."""
    global _LAST
    _LAST = None  # free the previous run's model and images first
    resume = rec is not None and load_train_state(run_dir) is not None
    model, prepared, setup = _prepare_all(tcfg, train_method=True)
    method = METHODS.get(method_of(tcfg))
    record = {
        "run_id": run_dir.name, "mode": tcfg.mode, "method": method_of(tcfg), "status": "training",
        "config": tcfg.to_dict(), "model": model.adapter.describe(),
        "datasets": [{"flag": p.data.flag, "head": head_key(p.data.flag), "size": p.data.size, "task": p.data.task,
                      "classes": list(p.data.info.labels), "md5": p.data.md5, "n_outputs": p.data.info.n_classes}
                     for p in prepared.values()],
        "transform": setup.transform.as_dict(), "precision": setup.precision, "params": _params(model),
    }
    write_run_record(run_dir, record)
    progress_console.print(f"run folder: {run_dir}  (if interrupted: {_resume_hint(run_dir)})",
                           markup=False, highlight=False, soft_wrap=True)
    with resume_hints(run_dir):
        res, plan = fit_multidomain(model, _domains(prepared), tcfg.train, tcfg.multidomain, method=method,
                                    setup=setup, seed=tcfg.seed, run_dir=run_dir, resume=resume,
                                    on_epoch_end=on_epoch_end or _stop_hook(), hooks=with_trackers(hooks),
                                    description=f"{tcfg.mode} {tcfg.model} {len(prepared)} datasets")
    method.save(model, tcfg.lora, run_dir)
    times = res.epoch_times
    record.update(status="done", schedule=plan, curves=res.curves, result={
        "best_epoch": res.best_epoch, "best_val_metric": res.best_metric, "epochs_run": res.epochs_run,
        "stopped_early": res.stopped_early, "resumed_at_epoch": res.resumed_at_epoch,
        "steps_per_epoch": res.steps_per_epoch, "train_time_s": sum(times),
        "time_per_epoch_s": sum(times) / len(times) if times else 0.0, "epoch_times_s": times,
        "peak_memory": res.peak_memory})
    trained = Trained(run_dir, tcfg.digest(("train", "lora", "multidomain")), model, prepared, setup)
    trained.scores = {flag: _scores(model, p, setup) for flag, p in prepared.items()}
    record["scores_sha256"] = {flag: scores_digest(sc["test"]) for flag, sc in trained.scores.items()}
    write_run_record(run_dir, record)
    _LAST = trained
    return trained


def _reload(tcfg: RunConfig, run_dir: Path) -> Trained:
    """A finished run's model from its saved weights (another process, or a study cell)."""
    global _LAST
    _LAST = None
    model, prepared, setup = _prepare_all(tcfg, train_method=False)
    METHODS.get(method_of(tcfg)).load(model, run_dir)
    model.eval()
    _LAST = Trained(run_dir, tcfg.digest(("train", "lora", "multidomain")), model, prepared, setup)
    return _LAST


def _scores(model: MultiHeadClassifier, p: Prepared, setup: RunSetup) -> dict[str, torch.Tensor]:
    model.use(head_key(p.data.flag))
    setup = RunSetup(transform=p.transform, device=setup.device, precision=setup.precision,
                     channels_last=setup.channels_last, eval_batch_size=setup.eval_batch_size)
    return {s: predict(model, p.images[s], task=p.data.task, setup=setup) for s in ("val", "test")}


def shared_model(cfg: RunConfig, *, on_epoch_end=None, hooks: TrainHooks | None = None) -> tuple[Trained, dict]:
    """The run's trained model and its record: trained here, resumed, or read back when finished."""
    check_multidomain(cfg)
    tcfg = training_config(cfg)
    run_dir = run_folder(cfg)
    digest = tcfg.digest(("train", "lora", "multidomain"))
    with file_lock(run_dir / LOCK_FILE):
        rec = read_run_record(run_dir) if (run_dir / "run.json").exists() else None
        if rec is not None:
            check_resume(rec["config"], tcfg.to_dict(), run_dir)
        if rec is not None and rec.get("status") == "done":
            same = _LAST is not None and _LAST.run_dir == run_dir and _LAST.digest == digest
            trained = _LAST if same else _reload(tcfg, run_dir)
        else:
            trained = _train(cfg, tcfg, run_dir, rec, on_epoch_end, hooks)
        return trained, read_run_record(run_dir)


def run_multidomain(cfg: RunConfig, *, on_epoch_end=None, hooks: TrainHooks | None = None):
    """The shared model (trained once per run folder), scored on ``cfg.dataset``: one ordinary RunResult."""
    timer = Timer()
    trained, rec = shared_model(cfg, on_epoch_end=on_epoch_end, hooks=hooks)
    p = trained.prepared[cfg.dataset]
    p.config = cfg  # the report is this dataset's run: its own config (and hash)
    scores = trained.scores.get(cfg.dataset) or _scores(trained.model, p, trained.setup)
    digest = scores_digest(scores["test"])
    expected = (rec.get("scores_sha256") or {}).get(cfg.dataset)
    warnings = [] if digest == expected else [
        "test scores differ from those at the end of training (different device, batch size or library "
        "versions?)"]
    res = rec["result"]
    md = rec["schedule"]
    flag = p.data.flag
    extras = {
        "training": {**{k: res[k] for k in ("best_epoch", "epochs_run", "stopped_early", "resumed_at_epoch",
                                            "steps_per_epoch", "train_time_s", "time_per_epoch_s",
                                            "epoch_times_s", "peak_memory")},
                     "params": rec["params"], "adapter_path": str(trained.run_dir)},
        "curves": _curves(rec["curves"], cfg, flag),
        "multidomain": {
            "run_id": rec["run_id"], "datasets": list(cfg.multidomain.datasets), "head": head_key(flag),
            "domain_weights": cfg.multidomain.domain_weights or "none", "domain_bn": cfg.multidomain.domain_bn,
            "ordinal_loss": cfg.multidomain.ordinal_loss, "train_batches": md["train_batches"],
            "val_batches": md["val_batches"], "train_weight": md["train_weights"][flag],
            "val_weight": md["val_weights"][flag], "steps_per_epoch": md["steps_per_epoch"],
            "test_scores_sha256": digest,
        },
    }
    rule = ("total validation loss of all datasets" if cfg.train.select_metric == "loss"
            else f"mean validation {cfg.train.select_metric} over the datasets")
    selection = {"best_epoch": res["best_epoch"], "select_metric": cfg.train.select_metric, "epoch_rule": rule,
                 f"val_{cfg.train.select_metric}": res["best_val_metric"]}
    return result_of(p, test_scores=scores["test"], val_scores=scores["val"], extras=extras, selection=selection,
                     timer=timer, warnings=warnings)


def _curves(curves: dict, cfg: RunConfig, flag: str) -> dict:
    out = {k: curves[k] for k in ("epoch", "train_loss", "val_loss", "lr") if k in curves}
    for k in (f"val_loss/{flag}", f"val_{cfg.train.select_metric}/{flag}"):
        if k in curves:
            out[k.replace("/", " ")] = curves[k]
    return out


def _register(method: str) -> None:
    description = f"one backbone + a head per dataset, trained on all of --datasets ({method})"
    register_mode(f"{PREFIX}{method}", frozen=False, description=description)(run_multidomain)


for _m in METHODS.names():
    _register(_m)
