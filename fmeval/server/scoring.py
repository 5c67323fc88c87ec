"""Scoring a submission: a zip of per-dataset prediction CSVs against the labels the server holds.

Every dataset file goes through :func:`fmeval.predictions.load_predictions`, the
check ``fmeval score`` runs (row count, indices, probability ranges and sums,
column names), so a file the CLI refuses the server refuses with the same line.
The one difference is deliberate: a ``truth`` (or ``label``/``target``) column is
*dropped* before the check, because the thesis system took its ground truth
from the upload (``truth = prediction`` scored perfectly); here labels only ever
come from the server's own files.

The leaderboard's metrics are the thesis's (``reference/leaderboard.md``) so
the pre-loaded baselines compare: ACC, AUC and balanced ACC are fmeval's own
(the medmnist rules), Cohen's kappa is **unweighted for every task**
(RetinaMNIST included; fmeval's reports use quadratic kappa for ordinal tasks)
and precision is macro precision; multi-label metrics are means over labels.
"""

from __future__ import annotations

import csv
import io
import math
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from sklearn import metrics as skm

from fmeval.errors import FmevalError
from fmeval.metrics import (
    MULTILABEL, acc, auc, balanced_acc, bootstrap_weights, percentile_ci, predict_labels, validate_inputs,
)
from fmeval.predictions import PredictionsError, load_predictions
from fmeval.registry import Registry

TRUTH_COLUMNS = ("truth", "label", "labels", "target", "y_true")
CSV_NAME = re.compile(r"^(?:[A-Za-z0-9_.-]+/)?([a-z0-9]+?)(?:_(\d+))?\.csv$")


class SubmissionError(FmevalError):
    """An upload the server refuses; the message is shown to the submitter as it is."""


def _unweighted_kappa(task: str, y: np.ndarray, s: np.ndarray) -> float:
    y, s = validate_inputs(task, y, s)
    pred = predict_labels(task, s)
    if task == MULTILABEL:
        per = [skm.cohen_kappa_score(y[:, j], pred[:, j], labels=[0, 1]) for j in range(y.shape[1])]
        return float(np.nanmean(per))
    return float(skm.cohen_kappa_score(y, pred, labels=np.arange(s.shape[1])))


def _precision_macro(task: str, y: np.ndarray, s: np.ndarray) -> float:
    y, s = validate_inputs(task, y, s)
    pred = predict_labels(task, s)
    if task == MULTILABEL:
        return float(np.mean([skm.precision_score(y[:, j], pred[:, j], zero_division=0.0) for j in range(y.shape[1])]))
    return float(skm.precision_score(y, pred, labels=np.arange(s.shape[1]), average="macro", zero_division=0.0))


#: The leaderboard's metrics (the thesis system's), its own registry: adding ``kappa``
#: unweighted to fmeval's METRICS would change every fmeval report.
LEADERBOARD_METRICS: Registry[Callable[[str, np.ndarray, np.ndarray], float]] = Registry(
    "leaderboard metric", SubmissionError)
LEADERBOARD_METRICS.add("auc", auc, "ROC AUC (medmnist rule)", label="AUC", ranked="1")
LEADERBOARD_METRICS.add("balanced_acc", balanced_acc, "balanced accuracy", label="balanced ACC", ranked="1")
LEADERBOARD_METRICS.add("kappa", _unweighted_kappa, "Cohen's kappa, unweighted for every task (the thesis's rule)",
                        label="κ (unweighted)", ranked="1")
LEADERBOARD_METRICS.add("acc", acc, "accuracy (medmnist rule)", label="ACC", ranked="1")
LEADERBOARD_METRICS.add("precision", _precision_macro, "macro precision", label="precision", ranked="0")
RANKED = ("auc", "balanced_acc", "kappa", "acc")


def kappa_ci(task: str, y: np.ndarray, s: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile CI of unweighted kappa: each resample's confusion matrix is one
    matrix product of its count vector with the one-hot (truth, prediction) pairs."""
    y, s = validate_inputs(task, y, s)
    pred = predict_labels(task, s)
    ys, ps = (y.T, pred.T) if task == MULTILABEL else (y[None, :], pred[None, :])
    c = 2 if task == MULTILABEL else s.shape[1]
    values = []
    for w in bootstrap_weights(y.shape[0], n_boot, seed):
        per = []
        for yt, pt in zip(ys, ps):
            onehot = np.zeros((yt.size, c * c))
            onehot[np.arange(yt.size), yt * c + pt] = 1.0
            cm = (w @ onehot).reshape(-1, c, c)
            n = cm.sum(axis=(1, 2))
            po = np.trace(cm, axis1=1, axis2=2) / n
            pe = (cm.sum(axis=2) * cm.sum(axis=1)).sum(axis=1) / n**2
            with np.errstate(invalid="ignore", divide="ignore"):
                per.append((po - pe) / (1 - pe))
        values.append(np.nanmean(np.stack(per), axis=0) if len(per) > 1 else per[0])
    lo, hi, _ = percentile_ci(np.concatenate(values), 0.95)
    return lo, hi


@dataclass
class DatasetScore:
    """One dataset of a submission: its metrics, their CIs and the confusion matrix."""

    dataset: str
    n: int
    sha256: str
    metrics: dict[str, float]
    ci: dict[str, list[float]]
    confusion: list | None
    scores: np.ndarray = field(repr=False)  # [N, C], kept for the paired comparison

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "n": self.n, "sha256": self.sha256, "metrics": self.metrics,
                "ci": self.ci, "confusion": self.confusion}


def score_dataset(flag: str, task: str, labels: np.ndarray, class_names: list[str], path: Path,
                  *, n_boot: int = 200, seed: int = 0) -> DatasetScore:
    """Validate one file as ``fmeval score`` does and compute the leaderboard metrics."""
    preds = load_predictions(path, task=task, n_expected=len(labels), class_names=class_names)
    return score_arrays(flag, task, labels, class_names, preds.scores, preds.sha256, n_boot=n_boot, seed=seed)


def score_arrays(flag: str, task: str, labels: np.ndarray, class_names: list[str], scores: np.ndarray, sha256: str,
                 *, n_boot: int = 200, seed: int = 0) -> DatasetScore:
    """The leaderboard metrics of validated scores [N, C] (also what ``fmeval server rescore`` runs)."""
    y, s = labels if task == MULTILABEL else labels[:, 0], scores
    values = {e.name: float(e.obj(task, y, s)) for e in LEADERBOARD_METRICS}
    ci: dict[str, list[float]] = {}
    if n_boot:
        from fmeval.metrics import bootstrap

        boot = bootstrap(task, *validate_inputs(task, y, s), ["acc", "auc", "balanced_acc"], n_boot=n_boot, seed=seed)
        ci = {m: list(percentile_ci(v, 0.95)[:2]) for m, v in boot.items()}
        ci["kappa"] = list(kappa_ci(task, y, s, n_boot=n_boot, seed=seed))
    confusion = None
    if task != MULTILABEL:
        confusion = skm.confusion_matrix(y, predict_labels(task, s), labels=np.arange(len(class_names))).tolist()
    clean = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
    ci = {k: [x if math.isfinite(x) else None for x in v] for k, v in ci.items()}
    return DatasetScore(flag, int(len(y)), sha256, clean, ci, confusion, s)


def _without_truth(raw: bytes) -> bytes:
    """The CSV with any ground-truth column removed (labels come from the server only)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw  # load_predictions says what is wrong
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if not rows or not rows[0]:
        return raw
    drop = [i for i, c in enumerate(rows[0]) if c.strip().lower() in TRUTH_COLUMNS]
    if not drop:
        return raw
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    for row in rows:
        w.writerow([c for i, c in enumerate(row) if i not in drop])
    return out.getvalue().encode("utf-8")


@dataclass(frozen=True)
class ZipLimits:
    max_upload_bytes: int = 50 << 20
    max_member_bytes: int = 200 << 20  # one CSV, uncompressed (ChestMNIST at full precision is ~20 MB)
    max_total_bytes: int = 600 << 20
    max_members: int = 64
    max_ratio: int = 200  # uncompressed/compressed; CSVs of floats compress ~3-10x


def read_zip(data: bytes, datasets: list[str], size: int, limits: ZipLimits) -> dict[str, bytes]:
    """The per-dataset CSVs of an uploaded zip, by dataset flag; refuses zip-slip, zip bombs,
    unknown or duplicated datasets. Sizes are checked on the declared *and* the read bytes."""
    if len(data) > limits.max_upload_bytes:
        raise SubmissionError(f"upload is {len(data)} bytes; the limit is {limits.max_upload_bytes}.")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise SubmissionError("the upload is not a zip file; pack one predictions CSV per dataset into a zip.") from None
    members = [m for m in zf.infolist() if not m.is_dir()]
    if len(members) > limits.max_members:
        raise SubmissionError(f"the zip holds {len(members)} files; at most {limits.max_members} are accepted.")
    out: dict[str, bytes] = {}
    total = 0
    for m in members:
        name = m.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts or "\\" in name or ":" in name:
            raise SubmissionError(f"zip entry {name!r} points outside the archive; refused.")
        if Path(name).name.startswith(".") or name.startswith("__MACOSX/"):
            continue
        match = CSV_NAME.match(name.lower())
        if not match:
            raise SubmissionError(f"zip entry {name!r}: expected <dataset>.csv or <dataset>_{size}.csv.")
        flag, sz = match.group(1), match.group(2)
        if sz is not None and int(sz) != size:
            raise SubmissionError(f"zip entry {name!r} is for {sz} px, but the submission is for {size} px.")
        if flag not in datasets:
            raise SubmissionError(f"zip entry {name!r}: unknown dataset {flag!r}; this server ranks {', '.join(datasets)}.")
        if flag in out:
            raise SubmissionError(f"zip holds two files for {flag}.")
        if m.file_size > limits.max_member_bytes or m.file_size > max(m.compress_size, 1) * limits.max_ratio:
            raise SubmissionError(f"zip entry {name!r} expands to {m.file_size} bytes; refused as a zip bomb.")
        with zf.open(m) as fh:
            body = fh.read(limits.max_member_bytes + 1)  # the declared size may lie
        if len(body) > limits.max_member_bytes:
            raise SubmissionError(f"zip entry {name!r} expands past {limits.max_member_bytes} bytes; refused as a zip bomb.")
        total += len(body)
        if total > limits.max_total_bytes:
            raise SubmissionError(f"the zip expands past {limits.max_total_bytes} bytes; refused as a zip bomb.")
        out[flag] = body
    if not out:
        raise SubmissionError("the zip holds no predictions CSV.")
    return out


def score_zip(data: bytes, size: int, labels, limits: ZipLimits, *, n_boot: int = 200) -> list[DatasetScore]:
    """Score every dataset file of a zip against ``labels`` (a :class:`LabelStore`); all or nothing."""
    files = read_zip(data, labels.datasets, size, limits)
    scored = []
    with tempfile.TemporaryDirectory(prefix="fmeval-submission-") as tmp:
        for flag in sorted(files):
            held = labels.get(flag, size)
            path = Path(tmp) / f"{flag}.csv"
            path.write_bytes(_without_truth(files[flag]))
            try:
                scored.append(score_dataset(flag, held.task, held.labels, held.class_names, path, n_boot=n_boot))
            except PredictionsError as exc:
                raise SubmissionError(str(exc).replace(str(path), f"{flag}.csv")) from None
    return scored
