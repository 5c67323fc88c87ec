"""Study outputs from real runs: tables, summary, plots, paired CIs, all-wrong images, the HTML page.

The study is made of ordinary runs (``fmeval.runner`` path: RunConfig -> mode
-> reporter) of tiny random models on synthetic data: 2 datasets x 2 sizes x
2 models x (kNN with 2 seeds, linear probe, zero-shot with 2 prompt styles).
Every expected number is recomputed here from the runs' own files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fmeval.config import RunConfig
from fmeval.data import load_dataset
from fmeval.data.synthetic import write_synthetic
from fmeval.metrics import paired_difference
from fmeval.report import RunResult, finish, load_runs
from fmeval.studies import cells as C
from fmeval.studies import tables as T
from fmeval.studies.cells import StudyOutputError
from fmeval.studies.outputs import write_study_outputs

DATASETS = {"pneumoniamnist": (48, 24, 40), "breastmnist": (64, 24, 40)}  # different n_train: the fit has 2 x values
SIZES = (28, 64)
SEEDS = (0, 1)
STYLES = ("basic", "medical")
N_BOOT = 50


def _cells():
    """8 cells per dataset x size: kNN of both models with 2 seeds, linear probes, 2 zero-shot prompt styles."""
    for flag in DATASETS:
        for size in SIZES:
            for model in ("clip-vit-b32", "resnet18"):
                for seed in SEEDS:
                    yield {"mode": "knn", "model": model, "dataset": flag, "size": size, "seed": seed}
                yield {"mode": "linprobe", "model": model, "dataset": flag, "size": size, "seed": 0}
            for style in STYLES:
                yield {"mode": "zeroshot", "model": "clip-vit-b32", "dataset": flag, "size": size, "seed": 0,
                       "zeroshot.style": style}


def _run(cell: dict, data: Path, reports: Path) -> RunResult:
    from fmeval.modes import MODES

    values = {**cell, "data_root": str(data), "tiny": True, "pretrained": False, "n_boot": N_BOOT,
              "knn.ks": [1, 5, 11], "probe.lrs": [0.01], "probe.weight_decays": [0.0], "probe.epochs": 20,
              "reports_dir": str(reports)}
    cfg = RunConfig(mode=cell["mode"], model="x", dataset="x").with_values(values)
    # runner.execute minus the per-run PNGs (seconds each on a busy CPU; the study never reads them)
    return finish(MODES.get(cfg.mode).run(cfg), cfg.reports_dir, plots=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMEVAL_CACHE_DIR", str(root / "cache"))
        mp.setenv("FMEVAL_PROGRESS", "0")
        for i, (flag, n) in enumerate(DATASETS.items()):
            for size in SIZES:
                write_synthetic(root / "data", flag, size, n=n, seed=10 * i + size)
        for cell in _cells():
            _run(cell, root / "data", root / "runs")
        runs, skipped = load_runs(root / "runs")
        assert not skipped and len(runs) == len(list(_cells()))
        files = write_study_outputs("demo", runs, root / "out", n_boot=N_BOOT)
    return {"root": root, "runs": runs, "files": files, "out": root / "out", "data": root / "data"}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_key(r: RunResult) -> tuple:
    return (r.dataset_flag, int(r.dataset["size"]), r.model_name, r.mode, C.style_of(r))


def scores_and_labels(r: RunResult, data: Path) -> tuple[np.ndarray, np.ndarray]:
    """Straight from the run's predictions.csv (parsed here with numpy) and the npz file."""
    ds = load_dataset(r.dataset_flag, int(r.dataset["size"]), data, md5="off")
    table = np.loadtxt(Path(r.report_dir) / "predictions.csv", delimiter=",", skiprows=1, ndmin=2)
    assert table[:, 0].tolist() == list(range(len(table)))  # the full test split, in order
    return table[:, 1:], ds.labels("test")[:, 0]


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def test_cells_csv_has_one_row_per_run_with_its_numbers(study):
    rows = read_csv(study["out"] / "cells.csv")
    by_id = {r.run_id: r for r in study["runs"]}
    assert sorted(row["run_id"] for row in rows) == sorted(by_id)
    for col in ("model", "mode", "dataset", "size", "seed", "style", "protocol", "deviations", "input_size",
                "precision", "weights", "n_test", "auc", "auc_ci_low", "auc_ci_high", "acc_ci_low", "balanced_acc",
                "baseline_acc", "config_hash", "run_dir"):
        assert col in rows[0], col
    for row in rows:
        r = by_id[row["run_id"]]
        assert float(row["auc"]) == pytest.approx(r.test.metrics["auc"].value, abs=1e-6)
        assert float(row["acc_ci_high"]) == pytest.approx(r.test.metrics["acc"].ci_high, abs=1e-6)
        assert row["config_hash"] == r.config_hash and Path(row["run_dir"]) == Path(r.report_dir)
        assert row["style"] == (r.config["zeroshot"]["style"] if r.mode == "zeroshot" else "")
        assert row["weights"] == "tiny" and int(row["n_test"]) == 40


def test_tables_pool_seeds_within_one_dataset_and_size(study):
    expected: dict[tuple, list[float]] = {}
    for r in study["runs"]:
        expected.setdefault(run_key(r), []).append(r.test.metrics["auc"].value)
    rows = read_csv(study["out"] / "leaderboard.csv")
    assert len(rows) == len(expected) == 2 * 2 * (4 + 2)  # datasets x sizes x (2 models x 2 modes + 2 styles)
    for row in rows:
        vals = expected[(row["dataset"], int(row["size"]), row["model"], row["mode"], row["style"])]
        assert int(row["n_seeds"]) == len(vals) == (2 if row["mode"] == "knn" else 1)
        assert row["seeds"] == ("0 1" if row["mode"] == "knn" else "0")
        assert float(row["auc_mean"]) == pytest.approx(np.mean(vals), abs=1e-6)
        assert float(row["auc_min"]) == pytest.approx(min(vals), abs=1e-6)
        assert float(row["auc_max"]) == pytest.approx(max(vals), abs=1e-6)
        if len(vals) > 1:
            assert float(row["auc_sd"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-6)
        else:
            assert row["auc_sd"] == ""  # no spread from one seed

    md = (study["out"] / "leaderboard.md").read_text()
    headings = re.findall(r"^## (\w+) @ (\d+) px$", md, flags=re.M)
    assert sorted(headings) == sorted((d, str(s)) for d in DATASETS for s in SIZES)
    # each dataset x size table ranks exactly its own 6 entries, best AUC first
    for flag, size in headings:
        block = md.split(f"## {flag} @ {size} px\n")[1].split("\n## ")[0]
        table = [line.split(" | ") for line in block.splitlines() if re.match(r"^\| \d+ \|", line)]
        assert len(table) == 6
        aucs = [float(cells[5].split(" ± ")[0]) for cells in table]  # "| #", model, mode, style, seeds, AUC (± sd)
        assert aucs == sorted(aucs, reverse=True)
        got = {(cells[1], cells[2], cells[3].replace("–", "")): float(cells[5].split(" ± ")[0]) for cells in table}
        assert all((" ± " in cells[5]) == (cells[2] == "knn") for cells in table)  # an sd only from 2 seeds
        for (m, mode, style), auc in got.items():
            assert auc == pytest.approx(np.mean(expected[(flag, int(size), m, mode, style)]), abs=6e-5)


def test_multi_seed_ci_resamples_seeds_and_images_together(study):
    """Issue 22 item 8: the kNN entries (2 seeds) get the CI of the mean over seeds from a bootstrap that
    resamples the seeds and the 40 test images together, recomputed here with a loop and scikit-learn
    from the runs' predictions.csv; the one-seed entries keep their run's own CI."""
    from sklearn.metrics import roc_auc_score

    runs: dict[tuple, list[RunResult]] = {}
    for r in study["runs"]:
        runs.setdefault(run_key(r), []).append(r)
    rows = read_csv(study["out"] / "leaderboard.csv")
    checked = 0
    for row in rows:
        rs = sorted(runs[(row["dataset"], int(row["size"]), row["model"], row["mode"], row["style"])],
                    key=lambda r: r.seed)
        if len(rs) == 1:
            assert float(row["auc_ci_low"]) == pytest.approx(rs[0].test.metrics["auc"].ci_low, abs=1e-6)
            continue
        # clipped to [0, 1] as the metrics do (kNN's float32 votes can sum a few ulps past 1)
        loaded = [(np.clip(s, 0.0, 1.0), y) for s, y in (scores_and_labels(r, study["data"]) for r in rs)]
        y = loaded[0][1]
        idx = np.random.default_rng(0).integers(0, y.size, size=(N_BOOT, y.size))  # image stream, seed min(seeds)
        pick = np.random.default_rng([0, 1]).integers(0, len(rs), size=(N_BOOT, len(rs)))
        vals = [np.mean([roc_auc_score(y[idx[b]], loaded[j][0][idx[b], 1]) for j in pick[b]])
                for b in range(N_BOOT) if 0 < y[idx[b]].sum() < y.size]
        lo, hi = np.quantile(vals, [0.025, 0.975])
        assert (float(row["auc_ci_low"]), float(row["auc_ci_high"])) == pytest.approx((lo, hi), abs=1e-6)
        checked += 1
    assert checked == 2 * 2 * 2  # datasets x sizes x models (kNN)


def test_a_study_ranked_by_a_loss_like_metric_ranks_its_summary_by_that_metric(study, tmp_path):
    """Ranked by ECE (lower is better), the summary averages ECE over the datasets and ranks ascending;
    expectations from the runs' own ECE values (mean over seeds, then over the 2 datasets)."""
    files = write_study_outputs("ece", study["runs"], tmp_path / "out", metric="ece", n_boot=0)
    per: dict[tuple, dict[str, list[float]]] = {}
    for r in study["runs"]:
        key = (int(r.dataset["size"]), r.model_name, r.mode, C.style_of(r))
        per.setdefault(key, {}).setdefault(r.dataset_flag, []).append(r.test.metrics["ece"].value)
    md = files["leaderboard.md"].read_text()
    for size in SIZES:
        want = sorted((np.mean([np.mean(v) for v in by_ds.values()]), m, mode, style)
                      for (sz, m, mode, style), by_ds in per.items() if sz == size)
        block = md.split(f"## Summary @ {size} px: mean over 2 dataset(s)\n")[1].split("\n## ")[0]
        table = [line.split(" | ") for line in block.splitlines() if re.match(r"^\| \d+ \|", line)]
        assert [float(c[4]) for c in table] == pytest.approx([w[0] for w in want], abs=6e-5)
        assert [(c[1], c[2]) for c in table] == [(w[1], w[2]) for w in want]


def test_summary_averages_exactly_the_listed_datasets(study):
    entries = C.pool_entries([C.cell_row(r) for r in study["runs"]])
    default = read_csv(study["out"] / "summary.csv")
    assert {row["datasets"] for row in default} == {"breastmnist pneumoniamnist"}  # both: every model has both
    md = (study["out"] / "leaderboard.md").read_text()
    assert "mean over 2 dataset(s)" in md and "by default, every dataset on which each model" in md

    only = T.summarise(entries, ["pneumoniamnist"])
    assert [s.size for s in only] == list(SIZES)
    for s in only:
        assert s.datasets == ["pneumoniamnist"] and s.left_out == ["breastmnist"] and s.chosen_by == "study"
        for row in s.rows:
            k = row["key"]
            vals = [r.test.metrics["auc"].value for r in study["runs"]
                    if run_key(r) == ("pneumoniamnist", s.size, k.model, k.mode, k.style)]
            assert row["mean"]["auc"] == pytest.approx(np.mean(vals), abs=1e-12)
    for row in default:
        both = [np.mean([r.test.metrics["acc"].value for r in study["runs"]
                         if run_key(r) == (d, int(row["size"]), row["model"], row["mode"], row["style"])])
                for d in DATASETS]
        assert float(row["mean_acc"]) == pytest.approx(np.mean(both), abs=1e-6)

    table = T.summary_table(only[0], "auc", show_style=True, ambiguous=set()).to_markdown()
    assert "Unweighted mean over 1 dataset(s) (the study's summary_datasets): pneumoniamnist" in table
    assert "Not averaged: breastmnist" in table


def test_summary_datasets_are_checked(study, tmp_path):
    with pytest.raises(StudyOutputError, match="pneumoniamnist"):  # a typo gets a suggestion
        write_study_outputs("x", study["runs"], tmp_path, summary_datasets=["pneumoniamnst"])
    entries = C.pool_entries([C.cell_row(r) for r in study["runs"]])
    s = T.summarise(entries, ["pneumoniamnist", "dermamnist"])[0]  # a dataset nobody ran: no partial means
    assert all(math.isnan(row["mean"]["auc"]) and row["missing"] == ["dermamnist"] for row in s.rows)


# ---------------------------------------------------------------------------
# Paired comparisons, misclassified images, plots
# ---------------------------------------------------------------------------
def test_paired_ci_equals_a_direct_paired_difference(study):
    rows = read_csv(study["out"] / "paired.csv")
    # clip vs resnet18: kNN pooled over its 2 seeds, and the linear probe, per dataset x size
    assert len(rows) == 2 * 2 * 2
    by_id = {r.run_id: r for r in study["runs"]}
    for row in rows:
        a_runs = [by_id[i] for i in row["a_run"].split(";")]
        b_runs = [by_id[i] for i in row["b_run"].split(";")]
        assert row["seeds"] == ("0,1" if a_runs[0].mode == "knn" else "0") and row["correction"] == "Holm"
        assert {r.model_name for r in a_runs}.isdisjoint({r.model_name for r in b_runs})
        per_seed = []
        for a, b in zip(a_runs, b_runs):
            assert (a.mode, a.seed, a.dataset_flag) == (b.mode, b.seed, b.dataset_flag)
            sa, y = scores_and_labels(a, study["data"])
            sb, _ = scores_and_labels(b, study["data"])
            per_seed.append(paired_difference(a.dataset["task"], y, sa, sb, "auc", n_boot=N_BOOT, seed=a.seed))
        assert float(row["diff"]) == pytest.approx(np.mean([d["diff"] for d in per_seed]), abs=1e-6)
        assert float(row["diff"]) >= 0
        if len(per_seed) == 1:  # one seed: exactly the plain paired bootstrap
            d = per_seed[0]
            assert float(row["ci_low"]) == pytest.approx(d["ci_low"], abs=1e-6)
            assert float(row["ci_high"]) == pytest.approx(d["ci_high"], abs=1e-6)
            assert float(row["p_boot"]) == pytest.approx(d["p_boot"], abs=1e-6)
        significant = float(row["ci_low"]) > 0 and float(row["p_adj"]) < 0.05
        assert (row["verdict"] == f"{row['a']} beats {row['b']}") == significant
    text = " ".join((study["out"] / "paired.md").read_text().split())
    assert "A beats B\" only when the 95% CI excludes 0 and p (Holm) < 0.05" in text


def test_misclassified_are_exactly_the_images_every_run_got_wrong(study):
    for flag in DATASETS:
        for size in SIZES:
            runs = [r for r in study["runs"] if r.dataset_flag == flag and int(r.dataset["size"]) == size]
            wrong = np.ones(40, dtype=bool)
            for r in runs:
                s, y = scores_and_labels(r, study["data"])
                pred = (s[:, 1] > 0.5).astype(int) if s.shape[1] == 2 else s.argmax(1)
                wrong &= pred != y
            rows = read_csv(study["out"] / f"misclassified_{flag}-{size}.csv")
            assert [int(row["index"]) for row in rows] == np.flatnonzero(wrong).tolist()
            assert all(int(row["true_label"]) == y[int(row["index"])] for row in rows)
            sheet = study["out"] / f"misclassified_{flag}-{size}.png"
            assert sheet.exists() == bool(wrong.any())
    manifest = json.loads((study["out"] / "outputs.json").read_text())
    assert manifest["misclassified"]["pneumoniamnist-28"]["n_runs"] == 8


def test_every_plot_exists_and_is_recorded(study):
    from PIL import Image

    manifest = json.loads((study["out"] / "outputs.json").read_text())
    assert [p["file"] for p in manifest["plots"]] == [
        "plot_resolution.png", "plot_boxes.png", "plot_train_size.png", "plot_prompt_styles.png"]
    for p in manifest["plots"]:
        with Image.open(study["out"] / p["file"]) as im:
            assert im.format == "PNG" and im.size[0] > 300
        assert study["files"][p["file"]] == study["out"] / p["file"]


def test_plots_are_skipped_cleanly_when_the_study_has_nothing_for_them(study, tmp_path):
    runs = [r for r in study["runs"] if r.dataset_flag == "pneumoniamnist" and r.dataset["size"] == 28
            and r.mode == "linprobe"]
    (tmp_path / "plot_boxes.png").write_bytes(b"stale")  # left by an earlier call: must not survive
    files = write_study_outputs("tiny", runs, tmp_path, n_boot=10)
    manifest = json.loads((tmp_path / "outputs.json").read_text())
    assert all(p["file"] is None and p["caption"].startswith("skipped:") for p in manifest["plots"])
    assert not list(tmp_path.glob("plot_*.png")) and not any(k.startswith("plot_") for k in files)
    assert len(read_csv(tmp_path / "paired.csv")) == 1 and "skipped: every dataset was run at one image size" in (
        tmp_path / "index.html").read_text()


def test_resolution_plot_follows_the_encoder_input_size_at_one_image_size(study, tmp_path, monkeypatch):
    """A study at one image size that varies --input-size gets its resolution plot over input sizes;
    two variants at the same input size (an override) are never joined into one line."""
    monkeypatch.setenv("FMEVAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("FMEVAL_PROGRESS", "0")
    base = {"mode": "knn", "model": "resnet18", "dataset": "breastmnist", "size": 28, "seed": 0}
    runs = [_run({**base, "input_size": n}, study["data"], tmp_path / "runs") for n in (32, 64)]
    files = write_study_outputs("inputs", runs, tmp_path / "out", n_boot=10)
    manifest = json.loads((tmp_path / "out" / "outputs.json").read_text())
    plot = next(p for p in manifest["plots"] if p["name"] == "resolution")
    assert plot["file"] == "plot_resolution.png" and "plot_resolution.png" in files
    assert plot["title"] == "AUC against encoder input size"
    board = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "| input 32 |" in board and "| input 64 |" in board  # variants named by what differs
    # a second variant (another kNN temperature) at input 32: input 32 is now two entries, no line
    other = _run({**base, "input_size": 32, "knn.temperature": 0.5}, study["data"], tmp_path / "runs")
    out = write_study_outputs("inputs2", [*runs, other], tmp_path / "out2", n_boot=10)
    manifest = json.loads((tmp_path / "out2" / "outputs.json").read_text())
    plot = next(p for p in manifest["plots"] if p["name"] == "resolution")
    assert plot["file"] is None and "one encoder input size" in plot["caption"] and "plot_resolution.png" not in out
    board = (tmp_path / "out2" / "leaderboard.md").read_text()  # the columns cannot tell the 32s apart: digests
    assert sum(f"| input 32 · {C.variant_of(r)} |" in board for r in (runs[0], other)) == 2


def test_limit_subsets_are_a_group_of_their_own_and_still_paired(study, tmp_path):
    """--limit runs scored a subset (indices not 0..N-1): never ranked with full runs, read and paired anyway."""
    limited = [_run({"mode": "knn", "model": m, "dataset": "pneumoniamnist", "size": 28, "seed": 0, "limit": 16},
                    study["data"], tmp_path / "runs") for m in ("clip-vit-b32", "resnet18")]
    full = [r for r in study["runs"] if r.dataset_flag == "pneumoniamnist" and r.dataset["size"] == 28
            and r.mode == "knn" and r.seed == 0]
    write_study_outputs("lim", [*limited, *full], tmp_path / "out", n_boot=20)
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## pneumoniamnist @ 28 px\n" in md and "## pneumoniamnist @ 28 px (test subset, --limit 16)\n" in md
    assert "## Summary @ 28 px, --limit 16 subsets" in md
    pairs = read_csv(tmp_path / "out" / "paired.csv")
    assert sorted((p["limit"], p["n_test"]) for p in pairs) == [("0", "40"), ("16", "16")]

    subset = np.loadtxt(Path(limited[0].report_dir) / "predictions.csv", delimiter=",", skiprows=1)[:, 0]
    assert subset.size == 16 and subset.max() > 15  # a real subset of the 40 test images
    wrong = read_csv(tmp_path / "out" / "misclassified_pneumoniamnist-28-limit16.csv")
    assert {int(r["index"]) for r in wrong} <= set(subset.astype(int).tolist())


# ---------------------------------------------------------------------------
# The HTML page
# ---------------------------------------------------------------------------
EVIL = '<img src=x onerror="document.body.dataset.pwned=1">'


@pytest.fixture(scope="module")
def evil_page(study, tmp_path_factory):
    """Two runs, one with a model name, a path and a warning that carry HTML."""
    root = tmp_path_factory.mktemp("evil")
    runs = []
    for r in [r for r in study["runs"] if r.dataset_flag == "breastmnist" and r.dataset["size"] == 28
              and r.mode == "knn" and r.seed == 0]:
        folder = root / (f'run"><script>alert(1)</script>{r.model_name}')
        shutil.copytree(r.report_dir, folder)
        ev = RunResult.load(folder / "results.json")
        if ev.model_name == "resnet18":
            ev.model["name"] = EVIL
            ev.warnings.append("</details><script>document.body.dataset.pwned=2</script>")
        runs.append(ev)
    write_study_outputs(EVIL, runs, root / "out", n_boot=10)
    return root / "out" / "index.html"


def test_page_is_self_contained_and_escapes_user_strings(study, evil_page):
    page = (study["out"] / "index.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page) and "<link" not in page
    manifest = json.loads((study["out"] / "outputs.json").read_text())
    sheets = sum(1 for m in manifest["misclassified"].values() if m["n"])
    assert page.count('src="data:image/png;base64,') == 4 + sheets  # 4 plots + the contact sheets
    for r in study["runs"]:
        assert r.run_id in page and r.config_hash in page  # every run's provenance block
    assert page.count("<details>") == len(study["runs"])

    evil = evil_page.read_text()
    assert EVIL not in evil and "<script>alert(1)" not in evil and "pwned=2</script>" not in evil
    assert "&lt;img src=x onerror=&quot;document.body.dataset.pwned=1&quot;&gt;" in evil
    assert evil.count("<script") == 2  # the error hook and the page's script, nothing injected


class _Tables(HTMLParser):
    """Tables of a dumped DOM: attributes of each table, and its body rows as lists of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.body: dict[str, str] = {}
        self._cell: list[str] | None = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = {k: v or "" for k, v in a.items()}
        elif tag == "table":
            self.tables.append({"attrs": a, "header": [], "rows": []})
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            (self.tables[-1]["rows"][-1] if tag == "td" else self.tables[-1]["header"]).append(text)
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        msg = "chromium not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def render(page: Path, *, screenshot: Path | None = None) -> tuple[_Tables, list[str]]:
    """Load the page in headless Chromium: the DOM after its scripts ran, and every console message.

    ``--enable-logging=stderr --v=0`` prints each console message (uncaught
    errors and Content-Security-Policy violations included) as an
    ``INFO:CONSOLE`` line; the page itself logs nothing, so any such line is a fault.
    """
    args = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
            "--enable-logging=stderr", "--v=0", "--window-size=1400,2200", "--dump-dom"]
    if screenshot is not None:
        args.append(f"--screenshot={screenshot}")
    proc = subprocess.run([*args, page.resolve().as_uri()], capture_output=True, text=True, timeout=120,
                          cwd=page.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parsed = _Tables()
    parsed.feed(proc.stdout)
    return parsed, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def test_page_in_headless_chromium(study, evil_page, tmp_path):
    artifacts = Path(os.environ.get("FMEVAL_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "study_page.png"
    dom, console = render(study["out"] / "index.html", screenshot=shot)
    assert console == []
    assert dom.body.get("data-ready") == "1" and dom.body.get("data-js-errors") == "0"
    groups = {t["attrs"]["data-table"]: t for t in dom.tables}
    assert all(t["attrs"].get("data-sorted") == "0:asc" for t in dom.tables)  # the script sorted every table
    for r in study["runs"]:  # every run's entry is a row of its own dataset x size table
        t = groups[f"group-{r.dataset_flag}-{r.dataset['size']}"]
        assert [r.model_name, r.mode, C.style_of(r) or "–"] in [row[1:4] for row in t["rows"]]
    for flag in DATASETS:
        for size in SIZES:
            assert len(groups[f"group-{flag}-{size}"]["rows"]) == 6
    assert len(groups["paired"]["rows"]) == 8  # kNN pairs pooled over the 2 seeds
    assert shot.exists() and shot.stat().st_size > 10_000

    # The sort really runs, and the error hook really reports: re-sort by model (text, descending) and by
    # rank (numeric, descending), and append a script that throws.
    page = (study["out"] / "index.html").read_text()
    nonce = re.search(r'<script nonce="([^"]+)"', page).group(1)
    page = page.replace('data-sort-col="0" data-sort-dir="asc"', 'data-sort-col="1" data-sort-dir="desc"')
    page = page.replace("</body>", f'<script nonce="{nonce}">undefinedFunction();</script></body>')
    variant = tmp_path / "variant.html"
    variant.write_text(page)
    dom, console = render(variant)
    assert dom.body.get("data-js-errors") == "1" and any("undefinedFunction" in line for line in console)
    for t in dom.tables:
        col = [row[1] for row in t["rows"]]
        assert col == sorted(col, key=str.lower, reverse=True) and t["attrs"]["data-sorted"] == "1:desc"

    dom, console = render(evil_page)
    assert console == [] and "pwned" not in " ".join(dom.body) and dom.body.get("data-js-errors") == "0"
    assert EVIL in [row[1] for t in dom.tables if t["attrs"]["data-table"].startswith("group-") for row in t["rows"]]


def test_find_misclassified_multiclass_and_multilabel():
    """The all-wrong rule on hand-made scores: argmax for multi-class, any wrong label for multi-label."""
    from fmeval.studies.samples import RunScores, find_misclassified

    g = C.GroupKey("bloodmnist", 28)
    y = np.array([0, 1, 2, 2])
    a = RunScores(np.array([3, 5, 7, 9]), np.eye(3)[[1, 1, 0, 2]], y)  # wrong on 3, 7
    b = RunScores(np.array([3, 5, 7, 9]), np.eye(3)[[2, 0, 1, 2]], y)  # wrong on 3, 5, 7
    m = find_misclassified(g, [({"task": "multi-class", "run_id": "a", "classes": ["x", "y", "z"]}, a),
                               ({"task": "multi-class", "run_id": "b", "classes": ["x", "y", "z"]}, b)])
    assert m.indices.tolist() == [3, 7] and m.true_labels.tolist() == [0, 2] and m.true_text(1) == "z"
    assert m.n_common == 4 and m.n_runs == 2

    yl = np.array([[1, 0], [0, 1], [1, 1]])
    c = RunScores(np.array([0, 1, 2]), np.array([[0.9, 0.1], [0.2, 0.4], [0.8, 0.9]]), yl)  # wrong on 1
    d = RunScores(np.array([1, 2]), np.array([[0.1, 0.2], [0.7, 0.1]]), yl[1:])  # wrong on 1, 2; scored 1, 2 only
    m = find_misclassified(g, [({"task": "multi-label, binary-class", "run_id": "c", "classes": ["p", "q"]}, c),
                               ({"task": "multi-label, binary-class", "run_id": "d", "classes": ["p", "q"]}, d)])
    assert m.indices.tolist() == [1] and m.n_common == 2 and m.true_text(0) == "q"
