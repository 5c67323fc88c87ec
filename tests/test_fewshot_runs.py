"""Few-shot runs end to end: sweeps and summaries, shared episodes, selection that never peeks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from fmeval.data.episodes import make_episode
from fmeval.data.synthetic import synthetic_arrays
from fmeval.io import atomic_path
from helpers import run

N = (60, 30, 40)
CLASSES = ["normal", "pneumonia"]


def _write(root: Path, arrays: dict[str, np.ndarray]) -> Path:
    path = root / "pneumoniamnist.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return root


def _data(tmp_path: Path, name: str = "data", val_garbage: np.ndarray | None = None,
          val_labels_garbage: bool = False) -> Path:
    """Synthetic PneumoniaMNIST; optionally with noise images at ``val_garbage`` (val positions) and/or
    permuted val labels (train and test are the same arrays in every variant)."""
    arrays = synthetic_arrays("pneumoniamnist", 28, N, seed=0)
    rng = np.random.default_rng(123)
    if val_garbage is not None:
        imgs = arrays["val_images"].copy()
        imgs[val_garbage] = rng.integers(0, 256, size=imgs[val_garbage].shape, dtype=np.uint8)
        arrays["val_images"] = imgs
    if val_labels_garbage:
        arrays["val_labels"] = 1 - arrays["val_labels"]
    return _write(tmp_path / name, arrays)


def _reports(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/results.json"))]


def _by_shot(runs: list[dict]) -> dict[tuple[int, int], dict]:
    return {(r["extras"]["fewshot"]["shots"], r["extras"]["fewshot"]["draw"]): r for r in runs}


TINY = ("--tiny", "--dataset", "pneumoniamnist", "--bootstrap", "20")


def test_sweep_runs_one_report_per_k_and_draw_then_a_summary(capsys, tmp_path):
    data, reports = _data(tmp_path), tmp_path / "reports"
    code, out, err = run(capsys, "knn", "--model", "resnet18", *TINY, "--data-root", str(data),
                         "--reports-dir", str(reports), "--shots", "1,2", "--draws", "2", "--k", "3,5")
    assert code == 0, err
    runs = _by_shot(_reports(reports))
    assert sorted(runs) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for (k, d), r in runs.items():
        fs = r["extras"]["fewshot"]
        assert fs["n_train"] == 2 * k and fs["episode"]["counts"] == {"normal": k, "pneumonia": k}
        assert r["config"]["fewshot"] == {"shots": k, "draw": d, "selection": "fixed", "standardize_min_shots": 16}
        assert r["selection"]["k"] == min(3, 2 * k) and r["val"] is None  # first --k, clipped; no validation
        assert r["dataset"]["n_train"] == N[0]  # the split's size, not the episode's
    episode = {key: r["extras"]["fewshot"]["episode"]["indices"] for key, r in runs.items()}
    assert episode[(1, 0)] != episode[(1, 1)] and set(episode[(1, 0)]) <= set(episode[(2, 0)])  # nested in K
    assert all(r["extras"]["cache_hits"]["train"] for (k, d), r in runs.items() if (k, d) != (1, 0))  # extracted once
    (folder,) = reports.glob("fewshot-*")
    assert sorted(p.name for p in folder.iterdir()) == ["summary.json", "summary.md", "summary.png"]
    summary = json.loads((folder / "summary.json").read_text())
    (curve,) = summary["curves"]
    for k in (1, 2):
        values = [runs[(k, d)]["test"]["metrics"]["auc"]["value"] for d in (0, 1)]
        stat = curve["per_k"][str(k)]["auc"]
        assert stat["values"] == values
        assert stat["mean"] == pytest.approx(np.mean(values)) and stat["std"] == pytest.approx(np.std(values, ddof=1))
    assert "K=1" in out and "summary:" in out and (folder / "summary.md").read_text().count("| resnet18 · knn |") >= 4
    # few-shot runs are kept out of the leaderboard's ranking (their view is the summary)
    from fmeval.report import RunResult
    from fmeval.report.leaderboard import row_of

    r = RunResult.load(next(reports.glob("*_knn_*/results.json")))
    r.model["weights_id"] = "timm:resnet18.a1_in1k"  # as if pretrained: only the shots keep it out
    assert row_of(r)["shots"] in (1, 2) and not row_of(r)["comparable"]
    r.extras.pop("fewshot")
    assert row_of(r)["comparable"]


def test_episodes_are_the_same_for_every_model_and_mode(capsys, tmp_path):
    """Same seed -> the same training images for kNN, the linear probe and fine-tuning, whatever the model."""
    data = _data(tmp_path)
    commands = {
        "knn": ("knn", "--model", "resnet18"),
        "linprobe": ("linprobe", "--model", "vit-s16", "--epochs", "5"),
        "finetune-full": ("finetune", "--full", "--model", "resnet18", "--epochs", "1"),
    }
    episodes = {}
    for name, cmd in commands.items():
        reports = tmp_path / f"reports-{name}"
        code, _, err = run(capsys, *cmd, *TINY, "--data-root", str(data), "--reports-dir", str(reports),
                           "--shots", "1,3", "--draws", "2" if name == "knn" else "1", "--seed", "7")
        assert code == 0, err
        runs = _by_shot(_reports(reports))
        assert {r["mode"] for r in runs.values()} == {name}
        episodes[name] = {key: r["extras"]["fewshot"]["episode"] for key, r in runs.items()}
    labels = synthetic_arrays("pneumoniamnist", 28, N, seed=0)["train_labels"]
    for (k, d), ep in episodes["knn"].items():
        expected = make_episode(labels, "binary-class", k, d, 7, CLASSES).indices.tolist()
        assert ep["indices"] == expected and ep["seed"] == 7
        others = ("linprobe", "finetune-full") if d == 0 else ()  # the other modes ran draw 0 only
        for other in others:
            assert episodes[other][(k, d)]["indices"] == expected
            assert episodes[other][(k, d)]["sha256"] == ep["sha256"]


def _val_draw(k: int, draw: int, seed: int) -> np.ndarray:
    labels = synthetic_arrays("pneumoniamnist", 28, N, seed=0)["val_labels"]
    return make_episode(labels, "binary-class", k, draw, seed, CLASSES, split="val").indices


def _choices(r: dict) -> dict:
    """What selection chose and saw: the choices, the validation numbers behind them, the test scores."""
    e = r["extras"]
    return {"selection": r["selection"], "k_sweep": e.get("k_sweep"), "grid": e.get("grid"),
            "val": None if r["val"] is None else r["val"]["metrics"], "test": r["test"]["metrics"]}


def _one(capsys, tmp_path, data: Path, tag: str, *args: str) -> dict:
    reports = tmp_path / f"reports-{tag}"
    code, _, err = run(capsys, *args, *TINY, "--data-root", str(data), "--reports-dir", str(reports))
    assert code == 0, err
    (r,) = _reports(reports)
    return r


@pytest.mark.parametrize("mode", [("knn", "--model", "resnet18", "--k", "1,3,5"),
                                  ("linprobe", "--model", "resnet18", "--epochs", "8", "--lr", "0.01,0.1")])
def test_selection_never_reads_the_full_validation_split(capsys, tmp_path, mode):
    clean = _data(tmp_path, "clean")
    every_val_garbage = _data(tmp_path, "garbage", val_garbage=np.arange(N[1]), val_labels_garbage=True)
    keep = _val_draw(2, 0, 0)
    others = np.setdiff1d(np.arange(N[1]), keep)
    garbage_outside_draw = _data(tmp_path, "outside", val_garbage=others)

    # fixed: no validation data at all, so nothing about the validation split can change a choice
    a = _one(capsys, tmp_path, clean, "fixed-a", *mode, "--shots", "2")
    b = _one(capsys, tmp_path, every_val_garbage, "fixed-b", *mode, "--shots", "2")
    assert a["val"] is None and _choices(a) == _choices(b)
    assert a["extras"]["fewshot"]["n_val_used"] == 0

    # kshot-val: only the K-shot validation draw is read (its images are kept, all others are noise)
    a = _one(capsys, tmp_path, clean, "kshot-a", *mode, "--shots", "2", "--fewshot-selection", "kshot-val")
    b = _one(capsys, tmp_path, garbage_outside_draw, "kshot-b", *mode, "--shots", "2",
             "--fewshot-selection", "kshot-val")
    assert a["val"]["n"] == len(keep) == 4 and a["extras"]["fewshot"]["val_episode"]["indices"] == keep.tolist()
    assert _choices(a) == _choices(b)

    # control: full-val reads every validation image, so the same noise changes what selection saw
    a = _one(capsys, tmp_path, clean, "full-a", *mode, "--shots", "2", "--fewshot-selection", "full-val")
    b = _one(capsys, tmp_path, garbage_outside_draw, "full-b", *mode, "--shots", "2",
             "--fewshot-selection", "full-val")
    assert a["val"]["n"] == N[1] and _choices(a)["val"] != _choices(b)["val"]


def test_linear_probe_from_the_zeroshot_classifier_takes_shots(capsys, tmp_path):
    data = _data(tmp_path)
    r = _one(capsys, tmp_path, data, "zs", "linprobe", "--model", "clip-vit-b32", "--init", "zeroshot",
             "--feature-norm", "l2", "--prompts", "pneumonia", "--epochs", "3", "--shots", "2")
    assert r["extras"]["fewshot"]["n_train"] == 4 and r["selection"]["epoch"] == 3
    assert r["extras"]["prompt_bank_hash"] and len(r["extras"]["grid"]) == 1


def test_study_with_a_shots_axis_runs_one_cell_per_k_and_seed(tmp_path):
    from fmeval.report.fewshot import fewshot_curves
    from fmeval.studies.executors import run_cells
    from fmeval.studies.finish import finished_runs
    from fmeval.studies.plan import plan_study
    from fmeval.studies.spec import load_study

    data = _data(tmp_path)
    spec = {"name": "fs", "settings": {"tiny": True, "weights_seed": 0, "n_boot": 20, "data_root": str(data)},
            "axes": {"models": ["resnet18"], "datasets": ["pneumoniamnist"], "modes": ["knn", "zeroshot"],
                     "seeds": [0, 1], "shots": [1, 2]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    plan = plan_study(*load_study(path), reports_root=tmp_path / "reports")
    assert len(plan.cells) == 4 and len({c.key for c in plan.cells}) == 4  # zeroshot skipped: no text encoder
    assert run_cells(str(plan.state_dir), plan.cells)["done"] == 4
    runs, problems = finished_runs(plan)
    assert not problems
    (curve,) = fewshot_curves(runs)
    assert sorted((d["shots"], d["seed"]) for d in curve.draws) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {k: s["auc"].n for k, s in curve.stats().items()} == {1: 2, 2: 2}  # each seed is one draw


def test_fewshot_report_command_and_option_errors(capsys, tmp_path):
    data, reports = _data(tmp_path), tmp_path / "reports"
    base = ("knn", "--model", "resnet18", *TINY, "--data-root", str(data), "--reports-dir", str(reports))
    for extra, msg in ((("--draws", "2"), "--draws and --fewshot-selection need --shots"),
                       (("--shots", "2,2"), "lists a value twice"),
                       (("--shots", "0"), "--shots values must be >= 1"),
                       (("--shots", "2", "--fewshot-selection", "peek"), "few-shot selection must be")):
        code, _, err = run(capsys, *base, *extra)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, err
    assert not reports.exists()
    code, _, err = run(capsys, "fewshot", "report", "--reports-dir", str(tmp_path))
    assert code == 2 and "no few-shot runs" in err
    assert run(capsys, *base, "--shots", "1", "--draws", "2")[0] == 0
    code, out, _ = run(capsys, "fewshot", "report", "--reports-dir", str(reports))
    assert code == 0 and "K=1" in out and len(list(reports.glob("fewshot-*"))) == 2
