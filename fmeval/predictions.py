"""Prediction files: per-sample class probabilities, written and read back exactly.

The format is the one MedMNIST's own ``Evaluator`` writes and leaderboard
submissions use: one row per test index, then one probability per class (or,
for multi-label ChestMNIST, one per label)::

    index,normal,pneumonia
    0,0.9731,0.0269
    1,0.1203,0.8797

The header is optional (``medmnist.Evaluator.evaluate(save_folder=...)``
writes none); when present, the first column is named ``index`` / ``id`` /
``idx`` (or left blank, as pandas does) and the others are either all class
names (any order, case-insensitive) or all class indices ``0..C-1``.
A binary task also accepts ONE probability column, the positive (second) class's, as
``medmnist.Evaluator`` does (it scores ``y_score[:, -1]``): headerless, or headed by that
class's name or ``1``; it is read as ``[1 - p, p]``. Spreadsheet exports (UTF-8 BOM, CRLF line ends, blank trailing lines) are
accepted. Anything else is refused with one line that says what and where,
because a silently misread column is a wrong leaderboard entry.

Values are written with ``repr`` precision, so scoring the file of an fmeval
run reproduces that run's metrics exactly; the SHA-256 of the bytes read is
kept for the report's provenance.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fmeval.data.info import is_multilabel
from fmeval.errors import DataError
from fmeval.tasks import BINARY
from fmeval.io import atomic_write_bytes

INDEX_COLUMNS = ("index", "id", "idx", "")
RANGE_TOLERANCE = 1e-6  # float32 rounding of a probability
SUM_TOLERANCE = 1e-3  # single-label rows must sum to 1 within this (files rounded to ~4 decimals pass)
_SHOW = 5  # how many offending items an error message lists


class PredictionsError(DataError):
    """A predictions file does not match the dataset's test split or the format."""


@dataclass(frozen=True, eq=False)  # holds arrays: compare .digest / arrays explicitly
class Predictions:
    """A validated predictions file, rows in index order."""

    path: str
    sha256: str
    indices: np.ndarray  # int64 [N], 0..N-1
    scores: np.ndarray  # float64 [N, C]
    columns: tuple[str, ...]  # header cells after the index column; () when headerless

    def provenance(self) -> dict[str, Any]:
        return {
            "predictions_file": self.path,
            "predictions_sha256": self.sha256,
            "n": int(self.indices.size),
            "header": list(self.columns) or None,
        }


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def write_predictions(
    path: str | Path,
    scores: np.ndarray,
    class_names: Sequence[str],
    indices: np.ndarray | None = None,
    *,
    header: bool = True,
) -> str:
    """Write ``scores`` [N, C] atomically; returns the file's SHA-256.

    ``header=False`` gives the headerless file ``medmnist.Evaluator`` writes.
    Every value is written as ``repr(float(v))``, the shortest text that reads
    back to the same float64 (float32 scores are widened exactly).
    """
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] != len(class_names):
        raise PredictionsError(f"scores must be [N, {len(class_names)}], got shape {tuple(s.shape)}.")
    if not np.isfinite(s).all():
        raise PredictionsError("scores contain NaN or infinity; refusing to write a predictions file.")
    idx = np.arange(len(s)) if indices is None else np.asarray(indices)
    if idx.shape != (len(s),) or idx.dtype.kind not in "iu":
        raise PredictionsError(f"indices must be {len(s)} integers, got {idx.dtype} {tuple(idx.shape)}.")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if header:
        writer.writerow(["index", *class_names])
    for i, row in zip(idx.tolist(), s.astype(np.float64).tolist()):
        writer.writerow([i, *map(repr, row)])
    data = buf.getvalue().encode("utf-8")
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------
def _rows(path: Path) -> tuple[str, list[list[str]], list[int]]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PredictionsError(f"cannot read predictions file {path}: {exc.strerror or exc}.") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8-sig")  # spreadsheets prepend a BOM
    except UnicodeDecodeError:
        raise PredictionsError(f"{path} is not UTF-8 text (is it a CSV file?).") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        for row in reader:
            cells = [c.strip() for c in row]
            if any(cells):
                rows.append(cells)
                lines.append(reader.line_num)
    except csv.Error as exc:
        raise PredictionsError(f"{path}: not a valid CSV file (line {reader.line_num}: {exc}).") from None
    if not rows:
        raise PredictionsError(f"{path} is empty; expected one row of class probabilities per test image.")
    return digest, rows, lines


def _is_int(cell: str) -> bool:
    return cell.lstrip("+-").isdigit()


def _column_order(path: Path, header: list[str], class_names: Sequence[str]) -> list[int]:
    """For each probability column of the file, the class index it holds."""
    n = len(class_names)
    expected = f"{n} probability columns ({', '.join(class_names)})"
    if header[0].lower() not in INDEX_COLUMNS:
        raise PredictionsError(
            f"{path}: the first column must be the sample index (named index or id), found {header[0]!r}."
        )
    cols = header[1:]
    if len(cols) != n:
        raise PredictionsError(f"{path}: expected {expected} after the index column, found {len(cols)}: {', '.join(cols)}.")
    by_name = {name.strip().lower(): i for i, name in enumerate(class_names)}
    if all(c.lower() in by_name for c in cols):
        order = [by_name[c.lower()] for c in cols]
    elif all(_is_int(c) and 0 <= int(c) < n for c in cols):
        order = [int(c) for c in cols]
    else:
        unknown = [c for c in cols if c.lower() not in by_name and not (_is_int(c) and 0 <= int(c) < n)]
        what = f"unknown column(s) {', '.join(map(repr, unknown))}" if unknown else "a mix of class names and indices"
        raise PredictionsError(f"{path}: {what}; name the columns by class ({', '.join(class_names)}) or by index 0..{n - 1}.")
    if len(set(order)) != n:
        dup = sorted({c for c in cols if sum(x.lower() == c.lower() for x in cols) > 1})
        raise PredictionsError(f"{path}: column(s) {', '.join(map(repr, dup))} appear more than once.")
    return order


def _parse_table(path: Path, rows: list[list[str]], lines: list[int], width: int) -> tuple[np.ndarray, np.ndarray]:
    for row, line in zip(rows, lines):
        if len(row) != width:
            raise PredictionsError(f"{path}, line {line}: {len(row)} cells, expected {width} (index + {width - 1} probabilities).")
    cells = np.array(rows, dtype=str)
    try:
        idx = cells[:, 0].astype(np.int64)
    except ValueError:
        bad = next(i for i, c in enumerate(cells[:, 0].tolist()) if not _is_int(c))
        raise PredictionsError(f"{path}, line {lines[bad]}: index {str(cells[bad, 0])!r} is not an integer.") from None
    except OverflowError:  # an integer no split can have (past int64)
        bad = next(i for i, c in enumerate(cells[:, 0].tolist()) if not -2**63 <= int(c) < 2**63)
        raise PredictionsError(f"{path}, line {lines[bad]}: index {int(cells[bad, 0])} is outside the test split "
                               "(larger than any split can be).") from None
    try:
        scores = cells[:, 1:].astype(np.float64)
    except ValueError:
        for r, row in enumerate(cells[:, 1:].tolist()):
            for c, cell in enumerate(row):
                try:
                    float(cell)
                except ValueError:
                    what = "an empty cell" if not cell else f"non-numeric cell {cell!r}"
                    raise PredictionsError(f"{path}, line {lines[r]}: {what} in probability column {c + 1}.") from None
        raise  # pragma: no cover - numpy and float() disagree on a cell
    return idx, scores


def _check_indices(path: Path, idx: np.ndarray, lines: list[int], n_expected: int) -> None:
    values, first, counts = np.unique(idx, return_index=True, return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1][:_SHOW]
        raise PredictionsError(f"{path}: duplicate index(es) {', '.join(map(str, dup.tolist()))}; each test index must appear once.")
    out = (idx < 0) | (idx >= n_expected)
    if out.any():
        r = int(np.flatnonzero(out)[0])
        raise PredictionsError(f"{path}, line {lines[r]}: index {idx[r]} is outside the test split (0..{n_expected - 1}).")
    if idx.size != n_expected:
        missing = np.setdiff1d(np.arange(n_expected), idx)[:_SHOW].tolist()
        raise PredictionsError(
            f"{path}: {idx.size} rows, expected {n_expected} (one per test image); "
            f"missing index(es) {', '.join(map(str, missing))}{', ...' if n_expected - idx.size > _SHOW else ''}."
        )


def _check_probabilities(path: Path, idx: np.ndarray, scores: np.ndarray, lines: list[int], task: str) -> None:
    def where(mask: np.ndarray) -> tuple[int, int]:
        r, c = np.argwhere(mask)[0]
        return int(r), int(c)

    if np.isnan(scores).any():
        r, c = where(np.isnan(scores))
        raise PredictionsError(f"{path}, line {lines[r]}: NaN probability (index {idx[r]}, column {c + 1}).")
    # float32 softmax/sigmoid outputs can sit one rounding step outside [0, 1]
    # (1.0000001); those are probabilities, kept unchanged so scores round-trip exactly.
    bad = (scores < -RANGE_TOLERANCE) | (scores > 1 + RANGE_TOLERANCE)
    if bad.any():
        r, c = where(bad)
        raise PredictionsError(
            f"{path}, line {lines[r]}: probability {float(scores[r, c])!r} outside [0, 1] (index {idx[r]}, column {c + 1}); "
            "write probabilities, not logits."
        )
    if not is_multilabel(task):
        dev = np.abs(scores.sum(axis=1) - 1.0)
        if (dev > SUM_TOLERANCE).any():
            r = int(np.argmax(dev > SUM_TOLERANCE))
            raise PredictionsError(
                f"{path}, line {lines[r]}: the probabilities of index {idx[r]} sum to {scores[r].sum():.6g}, not 1 "
                f"(tolerance {SUM_TOLERANCE:g}); a {task} task needs one distribution over the classes per row."
            )


def _positive_column_only(rows: list[list[str]], headerless: bool, task: str, class_names: Sequence[str]) -> bool:
    """A binary file with one probability column, P(second class) (``medmnist.Evaluator``'s ``[:, -1]``)."""
    if task != BINARY or len(class_names) != 2 or len(rows[0]) != 2:
        return False
    if headerless:
        return True
    head = [c.strip().lower() for c in rows[0]]
    return head[0] in INDEX_COLUMNS and head[1] in (class_names[1].strip().lower(), "1")


def load_predictions(
    path: str | Path, *, task: str, n_expected: int, class_names: Sequence[str]
) -> Predictions:
    """Read and validate a predictions file; rows are returned in index order."""
    path = Path(path)
    digest, rows, lines = _rows(path)
    headerless = _is_int(rows[0][0])
    columns: tuple[str, ...] = ()
    order = list(range(len(class_names)))
    positive_only = _positive_column_only(rows, headerless, task, class_names)
    if not headerless:
        if not positive_only:
            order = _column_order(path, rows[0], class_names)
        columns, rows, lines = tuple(rows[0][1:]), rows[1:], lines[1:]
        if not rows:
            raise PredictionsError(f"{path} has a header but no rows.")
    idx, scores = _parse_table(path, rows, lines, 2 if positive_only else 1 + len(class_names))
    if positive_only:
        scores = np.concatenate([1.0 - scores, scores], axis=1)
    _check_indices(path, idx, lines, n_expected)
    _check_probabilities(path, idx, scores, lines, task)
    by_class = np.empty_like(scores)
    by_class[:, order] = scores
    sort = np.argsort(idx, kind="stable")
    return Predictions(str(path), digest, idx[sort], by_class[sort], columns)


def read_predictions(
    path: str | Path, *, task: str, n_expected: int, class_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` of a validated predictions file (see :func:`load_predictions`)."""
    p = load_predictions(path, task=task, n_expected=n_expected, class_names=class_names)
    return p.indices, p.scores


def read_run_predictions(path: Path, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, scores)`` of a run's own predictions.csv (the reporter's strict format), rows sorted by index."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PredictionsError(f"cannot read {path}: {exc.strerror or exc}.") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if not rows:
        raise PredictionsError(f"{path} is empty.")
    header, body = [c.strip().lower() for c in rows[0]], rows[1:]
    names = [c.strip().lower() for c in class_names]
    if header[:1] != ["index"] or sorted(header[1:]) != sorted(names) or not body:
        raise PredictionsError(f"{path}: expected the header index,{','.join(class_names)} and one row per test "
                               "image (a file written by the fmeval reporter).")
    order = [header[1:].index(n) for n in names]
    try:
        table = np.asarray(body, dtype=np.float64)
    except ValueError:
        raise PredictionsError(f"{path}: a row has a missing or non-numeric cell.") from None
    idx = table[:, 0].astype(np.int64)
    sort = np.argsort(idx, kind="stable")
    return idx[sort], table[sort][:, 1:][:, order]
