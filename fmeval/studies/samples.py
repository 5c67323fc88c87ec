"""Per-sample views of a study: each run's test scores, the test labels, and
the test images that every run got wrong.

A run folder's ``predictions.csv`` holds one row per test index it scored.
``fmeval.predictions.load_predictions`` validates a *submission* against the
full test split; a ``--limit`` run scored a subset whose indices are not
0..N-1, so this module reads the run's own file with a lighter reader that
checks the header against the run's class names and the indices against the
test split, and nothing else (the run wrote it; the reporter wrote it exactly).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from fmeval.errors import FmevalError
from fmeval.io import atomic_path
from fmeval.predictions import PredictionsError, read_run_predictions
from fmeval.studies.cells import StudyOutputError, run_dir_of
from fmeval.tasks import targets

PREDICTIONS_FILE = "predictions.csv"


@dataclass(frozen=True, eq=False)
class RunScores:
    """A run's test scores in index order, with the labels of those indices."""

    indices: np.ndarray  # int64 [N], increasing test-split indices
    scores: np.ndarray  # float64 [N, C]
    labels: np.ndarray  # what the metrics take: [N] (single label) or [N, L] (multi-label)


@dataclass(frozen=True)
class TestSource:
    """Where a run's test split comes from: a MedMNIST file (``flag`` at ``size`` under ``root``), or a
    user dataset reopened by its address and split options (``spec``; see :func:`fmeval.data.sources.reopen`)."""

    flag: str
    size: int
    root: str
    spec: str | None = None
    options: Any = None  # fmeval.data.local.SourceOptions (frozen, hashable)


def _open(src: TestSource):
    if src.spec is not None:
        from fmeval.data.sources import open_dataset

        return open_dataset(src.spec, src.size, options=src.options)  # the decoded arrays are cached
    from fmeval.data import load_dataset

    return load_dataset(src.flag, src.size, src.root, md5="off")  # the runs recorded their MD5; a 224 px file is GBs


def data_root_for(row: dict[str, Any], data_root: str | None) -> str:
    """The folder of the run's data file: the caller's choice, else the run's own, else the default."""
    from fmeval.data import default_data_root

    return str(data_root or row.get("data_root") or default_data_root())


def source_of(row: dict[str, Any], data_root: str | None) -> TestSource:
    """The test split a study row's run scored (its ``data_source``: set for user datasets)."""
    found = row.get("data_source")
    spec, options = found if found else (None, None)
    return TestSource(str(row["dataset"]), int(row["size"]), data_root_for(row, data_root), spec, options)


@lru_cache(maxsize=64)
def test_labels(src: TestSource) -> np.ndarray:
    """Stored test labels [N, W] of a dataset (small; the images are not decompressed)."""
    return _open(src).labels("test")


def test_images(src: TestSource, indices: np.ndarray) -> np.ndarray:
    """Only the images asked for; the decompressed split is dropped at once (not cached: GBs at 224 px)."""
    return np.array(_open(src).split("test").images[indices])


def load_run_scores(row: dict[str, Any], data_root: str | None) -> RunScores:
    """The run's scores and their test labels; a one-line :class:`StudyOutputError` when unavailable."""
    run_dir = run_dir_of(row)
    if run_dir is None:
        raise StudyOutputError(f"run {row['run_id']} has no report folder.")
    classes = list(row.get("classes") or [])
    try:
        idx, scores = read_run_predictions(run_dir / PREDICTIONS_FILE, classes)
    except PredictionsError as exc:
        raise StudyOutputError(str(exc)) from None
    try:
        labels = test_labels(source_of(row, data_root))
    except FmevalError as exc:
        raise StudyOutputError(f"test labels of {row['dataset']} @ {row['size']} unavailable: {exc}") from None
    if idx.size and (idx[0] < 0 or idx[-1] >= len(labels) or np.any(np.diff(idx) == 0)):
        raise StudyOutputError(f"{run_dir / PREDICTIONS_FILE}: indices do not fit the {len(labels)}-image test split "
                               "(was the run made on another data file?).")
    return RunScores(idx, scores, targets(str(row["task"]), labels[idx]))


# ---------------------------------------------------------------------------
# The images every run misclassified
# ---------------------------------------------------------------------------
@dataclass
class Misclassified:
    """Test indices of one group that every one of its runs got wrong."""

    group: Any  # GroupKey
    n_runs: int
    n_common: int  # test indices scored by every run
    indices: np.ndarray  # int64, increasing
    true_labels: np.ndarray  # [n] or [n, L]
    predicted: np.ndarray  # most common wrong prediction per index ([n] or [n, L])
    class_names: list[str]
    runs: list[str] = field(default_factory=list)

    def true_text(self, i: int) -> str:
        y = self.true_labels[i]
        if np.ndim(y) == 0:
            return self.class_names[int(y)] if int(y) < len(self.class_names) else str(int(y))
        return "+".join(self.class_names[j] for j in np.flatnonzero(y)) or "(none)"


def wrong_mask(task: str, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """True where the MedMNIST thresholding rule gets a sample wrong (multi-label: any label wrong)."""
    from fmeval.metrics import MULTILABEL, predict_labels

    pred = predict_labels(task, scores)
    return np.any(pred != labels, axis=1) if task == MULTILABEL else pred != labels


def find_misclassified(group, runs: list[tuple[dict[str, Any], RunScores]]) -> Misclassified:
    """Indices wrong in every run of the group (over the indices every run scored)."""
    from fmeval.metrics import predict_labels

    common = runs[0][1].indices
    for _, s in runs[1:]:
        common = np.intersect1d(common, s.indices, assume_unique=True)
    task = str(runs[0][0]["task"])
    all_wrong = np.ones(common.size, dtype=bool)
    preds = []
    for _, s in runs:
        pos = np.searchsorted(s.indices, common)
        all_wrong &= wrong_mask(task, s.labels[pos], s.scores[pos])
        preds.append(predict_labels(task, s.scores[pos]))
    keep = np.flatnonzero(all_wrong)
    stack = np.stack(preds)[:, keep]  # [runs, n] or [runs, n, L]
    first = runs[0][1]
    labels = first.labels[np.searchsorted(first.indices, common[keep])]
    return Misclassified(group, len(runs), int(common.size), common[keep], labels, _mode_over_runs(stack),
                         list(runs[0][0].get("classes") or []), [r["run_id"] for r, _ in runs])


def _mode_over_runs(stack: np.ndarray) -> np.ndarray:
    """The most common prediction per sample across runs (per label for multi-label)."""
    if stack.shape[1] == 0:
        return np.zeros(stack.shape[1:], dtype=np.int64)
    if stack.ndim == 3:
        return (stack.mean(axis=0) > 0.5).astype(np.int64)
    n_cls = int(stack.max()) + 1
    counts = np.stack([(stack == c).sum(axis=0) for c in range(n_cls)])  # [C, n]
    return counts.argmax(axis=0)


def misclassified_csv(m: Misclassified) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "true_label", "true_class", "most_common_prediction", "n_runs_wrong", "n_runs"])
    for i, idx in enumerate(m.indices.tolist()):
        y, p = m.true_labels[i], m.predicted[i]
        y_txt = str(int(y)) if np.ndim(y) == 0 else " ".join(map(str, np.asarray(y).tolist()))
        p_txt = str(int(p)) if np.ndim(p) == 0 else " ".join(map(str, np.asarray(p).tolist()))
        w.writerow([idx, y_txt, m.true_text(i), p_txt, m.n_runs, m.n_runs])
    return buf.getvalue()


# ---------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------
def _as_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 3] or a volume [D, H, W] (middle slice) -> [H, W, 3]."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] not in (1, 3):
        a = a[a.shape[0] // 2]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def contact_sheet(images: np.ndarray, captions: list[str], path: Path, *, tile: int = 96,
                  cols: int = 8, title: str = "") -> None:
    """A grid of images with a caption under each, written atomically as PNG.

    Drawn with Pillow (upscaled with nearest neighbour so 28 px pixels stay
    visible); matplotlib would take seconds per sheet for no gain.
    """
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)  # scalable when Pillow has FreeType
    except (TypeError, OSError, ImportError):
        font = ImageFont.load_default()
    cap_h, head_h, pad = 26, (18 if title else 0), 4
    n = max(len(captions), 1)
    cols = min(cols, n)
    rows = -(-n // cols)
    sheet = Image.new("RGB", (cols * (tile + pad) + pad, head_h + rows * (tile + cap_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, 3), title[:160], fill="black", font=font)
    for k, (img, cap) in enumerate(zip(images, captions)):
        r, c = divmod(k, cols)
        x, y = pad + c * (tile + pad), head_h + pad + r * (tile + cap_h + pad)
        sheet.paste(Image.fromarray(_as_rgb(img)).resize((tile, tile), Image.NEAREST), (x, y))
        for j, line in enumerate(cap.split("\n")[:2]):
            draw.text((x, y + tile + 1 + 12 * j), line[:16], fill="black", font=font)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def write_sheet(m: Misclassified, path: Path, src: TestSource, *, max_images: int = 64) -> int:
    """The first ``max_images`` misclassified test images, captioned '#index' and the true class."""
    if not m.indices.size:
        return 0
    idx = m.indices[:max_images]
    images = test_images(src, idx)
    captions = [f"#{i}\n{m.true_text(k)}" for k, i in enumerate(idx.tolist())]
    more = f" (first {len(idx)} of {m.indices.size})" if m.indices.size > len(idx) else ""
    contact_sheet(images, captions, path,
                  title=f"{m.group.title}: misclassified by all {m.n_runs} runs{more}")
    return len(idx)
