"""Run results: one typed schema, one folder per run, one table across runs.

Every evaluation mode returns a :class:`RunResult`; :func:`write_report` turns
it into ``<root>/<run_id>/{results.json, report.md, *.png}`` and appends a row
to ``<root>/runs.csv``; :func:`leaderboard` reads the JSON files back. The JSON
is the source of truth (versioned by ``schema_version``); Markdown, PNG and
CSV are views of it and can be regenerated.

All files are written atomically (temporary file + ``os.replace``) and the
shared ``runs.csv`` is rewritten under a lock, so concurrent runs never leave a
torn file or lose a row.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import secrets
import warnings
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from fmeval.errors import FmevalError
from fmeval.io import atomic_path, atomic_write_json, atomic_write_text, file_lock
from fmeval.metrics import METRICS, MetricsReport, higher_is_better

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
RUNS_CSV = "runs.csv"
_RUNS_LOCK = ".runs.csv.lock"  # a separate file: runs.csv itself is replaced, which would drop a lock on it
LEADERBOARD_METRICS = ("acc", "balanced_acc", "auc", "f1_macro")
_RUN_KEYS = ("run_id", "created", "mode", "model", "weights_id", "dataset", "size", "geometry", "seed")


class ReportError(FmevalError):
    """A results file cannot be read or written."""


# ---------------------------------------------------------------------------
# Schema
# ---------------------------------------------------------------------------
def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(obj: Any) -> Any:
    """Plain JSON types only: modes put numpy scalars, arrays, Paths and NaN into
    config/extras, and a report must never fail to save (or save invalid JSON,
    as NaN is) because of that."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    if is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(asdict(obj))
    if hasattr(obj, "to_dict"):
        return jsonable(obj.to_dict())
    return str(obj)


@dataclass
class RunResult:
    """The outcome of one evaluation run, in the same shape for every mode.

    ``model``: adapter description (name, family, weights_id, feature_dim,
    preprocess, ...). ``dataset``: flag, size, task, md5, md5_verified, n_train,
    n_val, n_test, path. ``geometry``: how images reached the encoder's input
    size ("resize" or "pad"). ``extras``: mode-specific facts (per-k results,
    ``curves`` = {"epoch": [...], "train_loss": [...], ...}, trainable params,
    peak memory, prompt-bank hash, ...).
    """

    run_id: str
    mode: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    geometry: str
    seed: int
    config: dict[str, Any]
    test: MetricsReport
    val: MetricsReport | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    created: str = field(default_factory=utc_now_iso)
    wall_time_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    @property
    def model_name(self) -> str:
        return str(self.model.get("name", "?"))

    @property
    def dataset_flag(self) -> str:
        return str(self.dataset.get("flag", "?"))

    def all_warnings(self) -> list[str]:
        """Run-level warnings first, then the test split's, then the validation split's."""
        out = list(self.warnings) + [w for w in self.test.warnings if w not in self.warnings]
        if self.val is not None:
            out += [f"val: {w}" for w in self.val.warnings]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "mode": self.mode,
            "created": self.created,
            "wall_time_s": jsonable(float(self.wall_time_s)),
            "model": jsonable(self.model),
            "dataset": jsonable(self.dataset),
            "geometry": self.geometry,
            "seed": int(self.seed),
            "config": jsonable(self.config),
            "test": self.test.to_dict(),
            "val": None if self.val is None else self.val.to_dict(),
            "extras": jsonable(self.extras),
            "provenance": jsonable(self.provenance),
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunResult":
        version = int(d.get("schema_version", 0))
        if version > SCHEMA_VERSION:
            raise ReportError(
                f"results schema_version {version} is newer than this fmeval understands ({SCHEMA_VERSION}); upgrade fmeval"
            )
        try:
            return cls(
                run_id=str(d["run_id"]),
                mode=str(d["mode"]),
                model=dict(d.get("model") or {}),
                dataset=dict(d.get("dataset") or {}),
                geometry=str(d.get("geometry", "")),
                seed=int(d.get("seed", 0)),
                config=dict(d.get("config") or {}),
                test=MetricsReport.from_dict(d["test"]),
                val=None if d.get("val") is None else MetricsReport.from_dict(d["val"]),
                extras=dict(d.get("extras") or {}),
                provenance=dict(d.get("provenance") or {}),
                warnings=list(d.get("warnings") or []),
                created=str(d.get("created", "")),
                wall_time_s=float(d.get("wall_time_s") or 0.0),
                schema_version=version,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ReportError(f"malformed results: {type(e).__name__}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "RunResult":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReportError(f"cannot read {path}: {e}") from None
        if not isinstance(data, Mapping):
            raise ReportError(f"{path} does not hold a JSON object")
        return cls.from_dict(data)


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def _slug(text: Any, max_len: int = 40) -> str:
    s = _SLUG.sub("-", str(text)).strip("-.") or "x"
    return s[:max_len].rstrip("-.")


def new_run_id(mode: str, model: str | Mapping[str, Any], dataset: str, size: int | None) -> str:
    """``20250101T120000Z_knn_dinov2-vits14_pneumoniamnist-28_3fa2c1``.

    Timestamp first so folders sort chronologically; the random suffix keeps two
    runs started in the same second (parallel seeds) apart. Safe as a folder name.
    """
    name = model.get("name", "model") if isinstance(model, Mapping) else model
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    size_part = f"-{size}" if size else ""
    return f"{stamp}_{_slug(mode, 24)}_{_slug(name)}_{_slug(dataset, 24)}{size_part}_{secrets.token_hex(3)}"


def reports_dir() -> Path:
    return Path(os.environ.get("FMEVAL_REPORTS_DIR") or "reports")


# ---------------------------------------------------------------------------
# Formatting helpers
# ---------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    return f"{float(v):.{digits}f}"


def _fmt_ci(lo: float, hi: float, digits: int = 4) -> str:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _csv_num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    return repr(round(float(v), 6))


# ---------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------
def _header_md(r: RunResult) -> list[str]:
    m, d, p = r.model, r.dataset, r.provenance
    git = p.get("git") or {}
    commit = git.get("commit")
    commit_s = "not a git checkout" if not commit else f"`{commit[:12]}`" + (" (dirty)" if git.get("dirty") else "")
    pk = p.get("packages") or {}
    libs = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    dev = p.get("device") or {}
    device = dev.get("cuda_device") or ("CPU" if dev else "?")
    md5 = d.get("md5")
    md5_s = f"`{md5}`" + (" (verified)" if d.get("md5_verified") else " (not verified)") if md5 else "–"
    return [
        f"# {r.mode} · {r.model_name} · {r.dataset_flag}" + (f" ({d['size']} px)" if d.get("size") else ""),
        "",
        f"- **run id**: `{r.run_id}`  ",
        f"- **created**: {r.created} · wall time {r.wall_time_s:.1f} s",
        f"- **model**: {r.model_name} (family {m.get('family', '?')}), weights `{m.get('weights_id', '?')}`, "
        f"feature dim {m.get('feature_dim', '?')}",
        f"- **dataset**: {r.dataset_flag}, task {d.get('task', r.test.task)}, size {d.get('size', '?')}, "
        f"train/val/test {d.get('n_train', '?')}/{d.get('n_val', '?')}/{d.get('n_test', r.test.n)}, md5 {md5_s}",
        f"- **geometry**: {r.geometry} · **seed**: {r.seed}",
        f"- **fmeval** {p.get('fmeval_version', '?')}, commit {commit_s}; python {p.get('python', '?')}, "
        f"{p.get('platform', '?')}; device {device}",
        f"- **libraries**: {libs or '?'}",
    ]


def _metrics_md(rep: MetricsReport, title: str) -> list[str]:
    pct = f"{rep.ci:.0%}"
    ci_note = f"{pct} percentile bootstrap over {rep.n_boot} resamples" if rep.n_boot else "no bootstrap"
    rows = []
    for name, mv in rep.metrics.items():
        arrow = "↑" if name not in METRICS or higher_is_better(name) else "↓"
        rows.append([f"{name} {arrow}", _fmt(mv.value), _fmt_ci(mv.ci_low, mv.ci_high), _fmt(rep.baseline.get(name))])
    return [
        f"## {title} (n = {rep.n}; {ci_note})",
        "",
        _md_table(["metric", "value", f"{pct} CI", "majority baseline"], rows),
        "",
    ]


def _per_class_md(rep: MetricsReport) -> list[str]:
    what = "label" if rep.confusion is None else "class"
    cols = ["support", "prevalence", "sensitivity", "specificity", "precision", "f1", "auc", "pred_rate"]
    rows = [[name] + [_fmt(row.get(c), 3) for c in cols] for name, row in rep.per_class.items()]
    header = [what, "support", "prevalence", "sensitivity (recall)", "specificity", "precision", "F1", "AUC", "predicted rate"]
    return [f"## Per-{what} (test)", "", _md_table(header, rows), ""]


def _confusion_md(rep: MetricsReport) -> list[str]:
    if rep.confusion is None:
        return []
    rows = [[name] + list(r) for name, r in zip(rep.class_names, rep.confusion)]
    return [
        "## Confusion matrix (test; rows = true, columns = predicted)",
        "",
        _md_table(["true \\ predicted"] + list(rep.class_names), rows),
        "",
    ]


def render_markdown(r: RunResult, images: Sequence[str] = ()) -> str:
    lines = _header_md(r) + [""] + _metrics_md(r.test, "Test metrics")
    warns = r.all_warnings()
    lines += ["## Warnings", ""] + ([f"- ⚠ {_md_escape(w)}" for w in warns] or ["none"]) + [""]
    if r.val is not None:
        lines += _metrics_md(r.val, "Validation metrics")
    lines += _per_class_md(r.test) + _confusion_md(r.test)
    if images:
        lines += ["## Plots", ""] + [f"![{Path(img).stem}]({img})" for img in images] + [""]
    extras = {k: v for k, v in r.extras.items() if k != "curves"}  # curves are plotted, and kept in results.json
    for title, block in (("Config", r.config), ("Extras", extras), ("Provenance", r.provenance)):
        if block:
            text = json.dumps(jsonable(block), indent=2)
            lines += [f"## {title}", "", "```json", text, "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Plots (matplotlib is imported only when a report is written)
# ---------------------------------------------------------------------------
def _new_figure(w: float, h: float) -> "Figure":
    """A Figure on the Agg canvas without pyplot: no global backend switch, no GUI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: "Figure", path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def plot_confusion(rep: MetricsReport, path: Path) -> None:
    cm = np.asarray(rep.confusion, dtype=np.float64)
    k = cm.shape[0]
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.45 * k
    fig = _new_figure(size + 1, size)
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    names = [_short(c) for c in rep.class_names]
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 15:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_title(f"Confusion matrix (n = {rep.n})")
    _save_png(fig, path)


def plot_reliability(rep: MetricsReport, path: Path) -> None:
    rel = rep.reliability
    edges = np.asarray(rel["edges"], dtype=np.float64)
    acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], dtype=np.float64)
    count = np.asarray(rel["count"], dtype=np.float64)
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = _new_figure(5, 5.5)
    ax, axh = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.bar(centers, np.nan_to_num(acc), width=width, edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ece = rep.metrics.get("ece")
    ax.set_title("Reliability diagram" + (f" (ECE = {ece.value:.3f})" if ece and math.isfinite(ece.value) else ""))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    axh.bar(centers, count, width=width, color="gray")
    axh.set_xlabel("confidence (probability of the predicted label)")
    axh.set_ylabel("count")
    axh.set_xlim(0, 1)
    _save_png(fig, path)


def _numeric_series(curves: Mapping[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for key, values in curves.items():
        try:
            arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 1 and arr.size:
            out[str(key)] = arr
    return out


def plot_curves(curves: Mapping[str, Any], path: Path) -> bool:
    """Losses on the left panel, everything else (AUC, ACC, lr...) on the right."""
    series = _numeric_series(curves)
    x_key = next((k for k in ("epoch", "step", "iteration") if k in series), None)
    x = series.pop(x_key) if x_key else None
    if not series:
        return False
    losses = {k: v for k, v in series.items() if "loss" in k.lower()}
    others = {k: v for k, v in series.items() if k not in losses}
    panels = [p for p in (losses, others) if p]
    fig = _new_figure(5 * len(panels), 4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, panel in zip(axes, panels):
        for key, y in panel.items():
            xs = x[: y.size] if x is not None and x.size >= y.size else np.arange(y.size)
            ax.plot(xs, y, marker="o" if y.size <= 30 else None, label=key)
        ax.set_xlabel(x_key or "index")
        ax.legend()
        ax.grid(alpha=0.3)
    _save_png(fig, path)
    return True


def write_plots(r: RunResult, run_dir: Path) -> list[str]:
    """Write the PNGs that apply to this run and return their file names."""
    written = []
    if r.test.confusion:
        plot_confusion(r.test, run_dir / "confusion.png")
        written.append("confusion.png")
    if r.test.reliability.get("count"):
        plot_reliability(r.test, run_dir / "reliability.png")
        written.append("reliability.png")
    curves = r.extras.get("curves")
    if isinstance(curves, Mapping) and plot_curves(curves, run_dir / "curves.png"):
        written.append("curves.png")
    return written


# ---------------------------------------------------------------------------
# runs.csv
# ---------------------------------------------------------------------------
def _run_row(r: RunResult) -> dict[str, str]:
    row = {
        "run_id": r.run_id, "created": r.created, "mode": r.mode, "model": r.model_name,
        "weights_id": str(r.model.get("weights_id", "")), "dataset": r.dataset_flag,
        "size": str(r.dataset.get("size", "")), "geometry": r.geometry, "seed": str(r.seed),
    }
    for name, mv in r.test.metrics.items():
        row[name] = _csv_num(mv.value)
        row[f"{name}_ci_low"] = _csv_num(mv.ci_low)
        row[f"{name}_ci_high"] = _csv_num(mv.ci_high)
    row["baseline_acc"] = _csv_num(r.test.baseline.get("acc"))
    row["n_warnings"] = str(len(r.all_warnings()))
    return row


def _merge_header(existing: Sequence[str], row: Mapping[str, str]) -> list[str]:
    """Keep the existing column order; a run with a new metric adds its columns at the end."""
    header = list(existing)
    header += [k for k in row if k not in header]
    return header


def append_run_row(r: RunResult, root: Path) -> Path:
    """Add one line to ``root/runs.csv``: read, extend, rewrite atomically, all under a lock.

    Re-writing the report of an existing run replaces its row instead of duplicating it.
    """
    path = root / RUNS_CSV
    row = _run_row(r)
    with file_lock(root / _RUNS_LOCK):
        rows: list[dict[str, str]] = []
        header: list[str] = []
        if path.exists():
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                header = list(reader.fieldnames or [])
                rows = [dict(x) for x in reader]
        header = _merge_header(header, row)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, restval="", extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        if any(x.get("run_id") == row["run_id"] for x in rows):
            rows = [row if x.get("run_id") == row["run_id"] else x for x in rows]
        else:
            rows.append(row)
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
    return path


def write_report(result: RunResult, root: str | Path | None = None, *, plots: bool = True) -> Path:
    """Write the run folder and its runs.csv row; return the run folder.

    results.json goes first: if plotting fails, the numbers are already safe.
    ``plots=False`` skips matplotlib (about 0.3 s per run) for sweeps of many runs.
    """
    root = Path(root) if root is not None else reports_dir()
    if _slug(result.run_id, 200) != result.run_id:
        raise ReportError(f"run_id {result.run_id!r} is not a safe folder name; use new_run_id()")
    run_dir = root / result.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / RESULTS_FILE, result.to_dict())
    try:
        images = write_plots(result, run_dir) if plots else []
    except ImportError as e:  # matplotlib is a dependency, but a report must not die for a plot
        warnings.warn(f"plots skipped: {e}", stacklevel=2)
        images = []
    atomic_write_text(run_dir / REPORT_FILE, render_markdown(result, images))
    append_run_row(result, root)
    return run_dir


# ---------------------------------------------------------------------------
# Terminal
# ---------------------------------------------------------------------------
def print_summary(result: RunResult, console: "Console | None" = None) -> None:
    """Metric, value, CI and majority baseline side by side, so a 0.62 accuracy
    that merely equals the majority rate is seen for what it is."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    rep = result.test
    table = Table(
        title=f"{result.mode} · {result.model_name} · {result.dataset_flag} (test, n = {rep.n})",
        caption=f"run {result.run_id}",
    )
    table.add_column("metric")
    table.add_column("value", justify="right", style="bold")
    table.add_column(f"{rep.ci:.0%} CI", justify="right")
    table.add_column("majority baseline", justify="right", style="dim")
    if result.val is not None:
        table.add_column("val", justify="right")
    for name, mv in rep.metrics.items():
        cells = [name, _fmt(mv.value), _fmt_ci(mv.ci_low, mv.ci_high), _fmt(rep.baseline.get(name))]
        if result.val is not None:
            cells.append(_fmt(result.val.value(name)))
        table.add_row(*cells)
    console.print(table)
    for w in result.all_warnings():
        console.print(f"⚠ {w}", style="yellow", markup=False, highlight=False)


# ---------------------------------------------------------------------------
# Leaderboard
# ---------------------------------------------------------------------------
@dataclass
class Leaderboard:
    """One row per run, best first by ``metric``."""

    metric: str
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)

    @property
    def metric_columns(self) -> list[str]:
        cols = list(LEADERBOARD_METRICS)
        return cols if self.metric in cols else cols + [self.metric]

    def to_markdown(self) -> str:
        header = ["#", "model", "weights", "mode", "dataset", "size", "geometry", "seed"]
        header += self.metric_columns + ["majority acc", "warnings"]
        body = []
        for i, row in enumerate(self.rows, 1):
            cells = [i] + [row[k] for k in ("model", "weights_id", "mode", "dataset", "size", "geometry", "seed")]
            for m in self.metric_columns:
                ci = _fmt_ci(row[f"{m}_ci_low"], row[f"{m}_ci_high"], 3)
                cells.append(_fmt(row[m], 3) + ("" if ci == "–" else f" {ci}"))
            cells += [_fmt(row["baseline_acc"], 3), row["n_warnings"]]
            body.append([str(c) for c in cells])
        arrow = "desc" if higher_is_better(self.metric) else "asc"
        title = f"# Leaderboard (sorted by {self.metric}, {arrow}; {len(self.rows)} runs)"
        notes = [f"- skipped: {w}" for w in self.warnings]
        return "\n".join([title, "", _md_table(header, body), ""] + notes) + "\n"

    def to_csv(self) -> str:
        cols = list(_RUN_KEYS) + ["n_test"]
        for m in self.metric_columns:
            cols += [m, f"{m}_ci_low", f"{m}_ci_high"]
        cols += ["baseline_acc", "n_warnings"]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for row in self.rows:
            writer.writerow([_csv_num(row[c]) if isinstance(row[c], float) else row[c] for c in cols])
        return buf.getvalue()


def _leaderboard_row(r: RunResult, metric: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": r.run_id, "created": r.created, "mode": r.mode, "model": r.model_name,
        "weights_id": r.model.get("weights_id", ""), "dataset": r.dataset_flag,
        "size": r.dataset.get("size", ""), "geometry": r.geometry, "seed": r.seed, "n_test": r.test.n,
    }
    for m in dict.fromkeys(list(LEADERBOARD_METRICS) + [metric]):
        mv = r.test.metrics.get(m)
        row[m] = mv.value if mv else math.nan
        row[f"{m}_ci_low"] = mv.ci_low if mv else math.nan
        row[f"{m}_ci_high"] = mv.ci_high if mv else math.nan
    row["baseline_acc"] = r.test.baseline.get("acc", math.nan)
    row["n_warnings"] = len(r.all_warnings())
    return row


def _sort_key(metric: str) -> Any:
    sign = -1.0 if higher_is_better(metric) else 1.0

    def key(row: Mapping[str, Any]) -> tuple[int, float, str]:
        v = row[metric]
        ok = isinstance(v, (int, float)) and math.isfinite(v)
        return (0 if ok else 1, sign * v if ok else 0.0, row["run_id"])  # missing values last

    return key


def leaderboard(
    root: str | Path | None = None,
    *,
    dataset: str | None = None,
    mode: str | None = None,
    size: int | None = None,
    metric: str = "auc",
) -> Leaderboard:
    """Collect every ``root/*/results.json`` into one table, best ``metric`` first.

    Unreadable or foreign files are skipped (listed in ``.warnings`` and emitted
    as Python warnings) rather than aborting: one crashed run must not hide all
    the others.
    """
    metric = METRICS.entry(metric).name  # a typo fails loudly, with suggestions
    root = Path(root) if root is not None else reports_dir()
    rows, skipped = [], []
    for path in sorted(root.glob(f"*/{RESULTS_FILE}")):
        try:
            r = RunResult.load(path)
        except FmevalError as e:
            skipped.append(f"{path}: {e}")
            warnings.warn(f"leaderboard skips {path}: {e}", stacklevel=2)
            continue
        if dataset is not None and r.dataset_flag != dataset:
            continue
        if mode is not None and r.mode != mode:
            continue
        if size is not None and str(r.dataset.get("size")) != str(size):
            continue
        rows.append(_leaderboard_row(r, metric))
    rows.sort(key=_sort_key(metric))
    return Leaderboard(metric=metric, rows=rows, warnings=skipped)


def write_leaderboard(
    root: str | Path | None = None, out_dir: str | Path | None = None, **filters: Any
) -> tuple[Path, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` (atomically) to ``out_dir`` (default: root)."""
    root = Path(root) if root is not None else reports_dir()
    out = Path(out_dir) if out_dir is not None else root
    board = leaderboard(root, **filters)
    md, csv_path = out / "leaderboard.md", out / "leaderboard.csv"
    atomic_write_text(md, board.to_markdown())
    atomic_write_text(csv_path, board.to_csv())
    return md, csv_path
