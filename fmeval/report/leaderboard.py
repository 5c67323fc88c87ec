"""Leaderboards that never rank incomparable runs together.

Rows are read from ``results.json`` files (never from ``runs.csv``). Runs are
grouped by dataset and image size: a table ranks only runs of one group, and
shows for each what else makes numbers differ (protocol and deviations,
input size, weights kind, precision, the data file's MD5). Quick looks
(``--limit`` subsets), tiny random models and few-shot runs (K labels per class:
their view is the few-shot summary) are kept out of the ranking
unless asked for.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from fmeval.errors import FmevalError
from fmeval.io import atomic_write_text
from fmeval.metrics import METRICS, higher_is_better, rank_order
from fmeval.report.fmt import csv_num, fmt, fmt_ci, md_table
from fmeval.report.schema import RESULTS_FILE, RunResult, reports_dir, run_files

LEADERBOARD_METRICS = ("auc", "acc", "balanced_acc", "f1_macro")
MD_DIGITS = 4  # leaderboard.md; BloodMNIST's AUC saturates at 0.999, 3 decimals hide the ranking


def weights_kind(model: dict) -> str:
    """pretrained | file | random | tiny | partial | external - what the weights behind a number are
    (external: a predictions file scored by ``fmeval score``, no weights fmeval knows)."""
    wid = str(model.get("weights_id", ""))
    if wid.startswith("external:"):
        return "external"
    if wid.startswith("random:"):
        return "tiny" if ":tiny" in wid else "random"
    if "+partial:" in wid:
        return "partial"
    if wid.startswith("file:"):
        return "file"
    return "pretrained" if wid else "?"


def _protocol_cell(r: RunResult) -> str:
    if not r.protocol:
        return "-"
    return str(r.protocol.get("name")) + ("*" if r.deviations else "")


def row_of(r: RunResult) -> dict[str, Any]:
    kind = weights_kind(r.model)
    row: dict[str, Any] = {
        "run_id": r.run_id, "created": r.created, "mode": r.mode, "model": r.model_name,
        "weights_id": r.model.get("weights_id", ""), "weights": kind,
        "dataset": r.dataset_flag, "size": r.dataset.get("size", ""),
        "input_size": (r.transform or {}).get("input_size", ""), "geometry": r.geometry,
        "precision": r.precision or "", "protocol": _protocol_cell(r),
        "deviations": ";".join(r.deviations), "seed": r.seed, "n_test": r.test.n,
        "limit": r.dataset.get("limit") or "", "md5_official": r.dataset.get("md5_verified"),
        "config_hash": r.config_hash, "study": (r.extras.get("study") or {}).get("name", ""),
        "shots": (r.extras.get("fewshot") or {}).get("shots") or "",
        # one model trained on several datasets (issue 24): the run id its per-dataset reports share
        "multidomain": (r.extras.get("multidomain") or {}).get("run_id", ""),
    }
    for m in dict.fromkeys([*LEADERBOARD_METRICS, *r.test.metrics]):
        mv = r.test.metrics.get(m)
        row[m] = mv.value if mv else math.nan
        row[f"{m}_ci_low"] = mv.ci_low if mv else math.nan
        row[f"{m}_ci_high"] = mv.ci_high if mv else math.nan
    row["baseline_acc"] = r.test.baseline.get("acc", math.nan)
    row["n_warnings"] = len(r.all_warnings())
    # a scored predictions file of another split (fmeval score --split val) is not a test number
    row["comparable"] = (not row["limit"] and not row["shots"] and kind != "tiny"
                         and r.dataset.get("scored_split", "test") == "test")
    return row


def load_runs(root: Path, pattern: str = f"*/{RESULTS_FILE}", *,
              warn: bool = True) -> tuple[list[RunResult], list[str]]:
    """Every readable run under ``root``; a bad file is skipped, named in one line.

    ``skipped`` holds one line per bad file (the path once, then why);
    ``warn=False`` leaves showing them to the caller (the CLI prints each
    as one warning line instead of a Python warning).
    """
    runs, skipped = [], []
    for path in run_files(root, pattern):
        try:
            runs.append(RunResult.load(path))
        except FmevalError as e:
            reason = " ".join(str(e).split()).replace(str(path), "the file")
            skipped.append(f"{path}: {reason}")
            if warn:
                warnings.warn(f"leaderboard skips {skipped[-1]}", stacklevel=2)
    return runs, skipped


@dataclass
class Leaderboard:
    """Rows grouped by (dataset, size), best first by ``metric`` inside each group."""

    metric: str
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    excluded: list[dict[str, Any]] = field(default_factory=list)  # kept out of the ranking

    @property
    def metric_columns(self) -> list[str]:
        cols = list(LEADERBOARD_METRICS)
        return cols if self.metric in cols else cols + [self.metric]

    def groups(self) -> dict[tuple[str, Any], list[dict[str, Any]]]:
        out: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for row in self.rows:
            out.setdefault((row["dataset"], row["size"]), []).append(row)
        return dict(sorted(out.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))))

    def to_markdown(self, title: str = "Leaderboard") -> str:
        arrow = "desc" if higher_is_better(self.metric) else "asc"
        lines = [f"# {title}", "",
                 f"Ranked by {self.metric} ({arrow}) within each dataset × size; only runs of one group are "
                 "comparable. `*` after a protocol: the run deviates from it (see its report).", ""]
        for (ds, size), rows in self.groups().items():
            md5 = {r["md5_official"] for r in rows}
            md5_s = "official data file" if md5 == {True} else "NOT the official data file" if False in md5 else "MD5 not checked"
            lines += [f"## {ds} @ {size} px (n_test {', '.join(sorted({str(r['n_test']) for r in rows}))}; {md5_s})", ""]
            header = ["#", "model", "mode", "protocol", "input", "geometry", "weights", "precision", "seed"]
            header += self.metric_columns + ["majority acc"]
            body = []
            for i, row in enumerate(rows, 1):
                cells = [i, row["model"], row["mode"], row["protocol"], row["input_size"], row["geometry"],
                         row["weights"], row["precision"], row["seed"]]
                for m in self.metric_columns:  # 4 decimals, as the study tables: AUC saturates near 1
                    ci = fmt_ci(row[f"{m}_ci_low"], row[f"{m}_ci_high"], MD_DIGITS)
                    cells.append(fmt(row[m], MD_DIGITS) + ("" if ci == "–" else f" {ci}"))
                cells.append(fmt(row["baseline_acc"], MD_DIGITS))
                body.append([str(c) for c in cells])
            lines += [md_table(header, body), ""]
            # what the `*` stands for, row by row: a deviating run never passes as the protocol
            devs = [f"- #{i} {row['model']} ({row['protocol']}): deviating in {row['deviations'].replace(';', '; ')}"
                    for i, row in enumerate(rows, 1) if row["deviations"]]
            lines += devs + ([""] if devs else [])
            shared = [f"- #{i} {row['model']} ({row['mode']}): one model for several datasets, multi-domain run "
                      f"`{row['multidomain']}`" for i, row in enumerate(rows, 1) if row.get("multidomain")]
            lines += shared + ([""] if shared else [])
        if self.excluded:
            lines += [f"{len(self.excluded)} run(s) kept out of the ranking (--limit subsets, tiny random "
                      "models, few-shot runs or another scored split); `fmeval report --all` includes them.", ""]
        lines += [f"- skipped: {w}" for w in self.warnings]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        rows = self.rows + self.excluded
        if not rows:
            return ""
        cols = list(rows[0])
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for row in rows:
            writer.writerow([csv_num(row.get(c)) if isinstance(row.get(c), float) else row.get(c, "") for c in cols])
        return buf.getvalue()


def build_leaderboard(runs: Iterable[RunResult], *, metric: str = "auc", include_all: bool = False,
                      dataset: str | None = None, mode: str | None = None, size: int | None = None,
                      skipped: list[str] | None = None) -> Leaderboard:
    metric = METRICS.entry(metric).name  # a typo fails loudly, with suggestions
    rows, excluded = [], []
    for r in runs:
        if dataset is not None and r.dataset_flag != dataset.lower():
            continue
        if mode is not None and r.mode != mode:
            continue
        if size is not None and str(r.dataset.get("size")) != str(size):
            continue
        row = row_of(r)
        (rows if (row["comparable"] or include_all) else excluded).append(row)
    rows.sort(key=lambda row: (row["dataset"], str(row["size"]), *rank_order(metric, row.get(metric), row["run_id"])))
    return Leaderboard(metric=metric, rows=rows, warnings=list(skipped or []), excluded=excluded)


def leaderboard(root: str | Path | None = None, **kw: Any) -> Leaderboard:
    """Every ``root/*/results.json`` as a grouped leaderboard."""
    root = Path(root) if root is not None else reports_dir()
    runs, skipped = load_runs(root)
    return build_leaderboard(runs, skipped=skipped, **kw)


def write_leaderboard(root: str | Path | None = None, out_dir: str | Path | None = None,
                      **kw: Any) -> tuple[Path, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` (atomically) to ``out_dir`` (default: root)."""
    root = Path(root) if root is not None else reports_dir()
    out = Path(out_dir) if out_dir is not None else root
    board = leaderboard(root, **kw)
    md, csv_path = out / "leaderboard.md", out / "leaderboard.csv"
    atomic_write_text(md, board.to_markdown())
    atomic_write_text(csv_path, board.to_csv())
    return md, csv_path


SHORT_MODES = {"finetune-lora": "ft-lora", "finetune-full": "ft-full", "prompts-compare": "prompts",
               "multidomain-lora": "md-lora", "multidomain-full": "md-full"}


def print_leaderboard(board: Leaderboard, console, *, wide: bool = False) -> None:
    """Terminal view: one table per dataset x size. The default columns fit an
    80-column terminal without breaking names; ``wide`` adds CIs and provenance."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    short = {"acc": "ACC", "balanced_acc": "bACC", "auc": "AUC", "f1_macro": "F1"}
    metrics = board.metric_columns if wide else [board.metric, "acc", "balanced_acc"]
    metrics = list(dict.fromkeys(metrics))
    for (ds, size), rows in board.groups().items():
        table = Table(title=escape(f"{ds} @ {size} px, ranked by {short.get(board.metric, board.metric)}"),
                      title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for col in ("model", "mode", "protocol"):
            table.add_column(col, no_wrap=True)
        table.add_column("in", justify="right", no_wrap=True)
        if wide:
            for col in ("weights", "prec", "seed"):
                table.add_column(col, no_wrap=True)
        for m in metrics:
            table.add_column(short.get(m, m), justify="right", no_wrap=True)
        if wide:
            table.add_column(f"{short.get(board.metric, board.metric)} 95% CI", no_wrap=True)
        table.add_column("maj.", justify="right", no_wrap=True)
        for row in rows:
            cells = [str(row["model"]), SHORT_MODES.get(row["mode"], str(row["mode"])), str(row["protocol"]),
                     str(row["input_size"])]
            if wide:
                cells += [str(row["weights"]), str(row["precision"]), str(row["seed"])]
            cells += [fmt(row[m], 3) for m in metrics]
            if wide:
                cells.append(fmt_ci(row[f"{board.metric}_ci_low"], row[f"{board.metric}_ci_high"], 3))
            cells.append(fmt(row["baseline_acc"], 3))
            table.add_row(*map(escape, cells))  # names come from results.json files: never markup
        console.print(table)
    if board.excluded:
        console.print(f"{len(board.excluded)} run(s) kept out of the ranking (--limit subsets, tiny random "
                      "models, few-shot runs or another scored split); --all includes them.", style="dim", highlight=False)
    if not board.rows and not board.excluded:
        console.print("no runs found.", style="dim")
