"""``fmeval submit STUDY``: a study's finished runs land on a leaderboard with the numbers the runs
report; a fine-tuned run without predictions.csv is predicted again through ``fmeval predict``'s path.

One small real study (a tiny random ViT-S/16 of the real architecture, kNN and LoRA, on the real
BreastMNIST and RetinaMNIST at 28 px) and a server whose benchmark is those two datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import run
from server_helpers import SHARED, Browserless, require_server_extra, running

pytestmark = pytest.mark.slow

TWO = ("breastmnist", "retinamnist")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(study YAML, reports folder) of a finished 4-cell study."""
    require_server_extra()
    tmp = tmp_path_factory.mktemp("study")
    spec = {"name": "lb-tiny",
            "settings": {"tiny": True, "weights_seed": 0, "n_boot": 20, "data_root": str(SHARED)},
            "axes": {"models": ["vit-s16"], "datasets": list(TWO), "sizes": [28], "input_sizes": [32],
                     "modes": ["knn", "finetune-lora"], "seeds": [0]},
            "overrides": [{"when": {"mode": "finetune-lora"},
                           "set": {"train.epochs": 1, "train.patience": 0, "train.warmup_epochs": 0}}]}
    path = tmp / "lb-tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    reports = tmp / "reports"
    mp = pytest.MonkeyPatch()
    mp.setenv("FMEVAL_CACHE_DIR", str(tmp / "cache"))
    mp.setenv("FMEVAL_DATA_ROOT", str(SHARED))
    try:
        from fmeval.cli import main

        with pytest.raises(SystemExit) as exc:
            main(["study", "run", str(path), "--reports-dir", str(reports)])
        assert exc.value.code == 0
        yield path, reports
    finally:
        mp.undo()


def _results(reports: Path, mode: str) -> dict[str, dict]:
    """dataset -> test metrics of the study's runs of ``mode``."""
    out = {}
    for p in (reports / "studies" / "lb-tiny" / "runs").glob("*/results.json"):
        r = json.loads(p.read_text())
        if r["mode"] == mode:
            out[r["dataset"]["flag"]] = {k: v["value"] for k, v in r["test"]["metrics"].items()}
    assert sorted(out) == sorted(TWO), out
    return out


def _run_dirs(reports: Path, mode: str) -> list[Path]:
    return [p.parent for p in (reports / "studies" / "lb-tiny" / "runs").glob("*/results.json")
            if json.loads(p.read_text())["mode"] == mode]


def _submitted(url: str, out: str) -> dict[str, dict]:
    import httpx

    sid = int(out.split("submission ", 1)[1].split(":", 1)[0])
    return {s["dataset"]: s for s in httpx.get(f"{url}/api/submissions/{sid}").json()["scores"]}, sid


def test_submit_a_study_by_its_yaml_lands_with_the_runs_numbers(study, capsys, tmp_path, monkeypatch):
    path, reports = study
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(SHARED))
    common = ("--reports-dir", str(reports), "--model-name", "tiny ViT")
    with running(tmp_path, "--bootstrap", "0", "--datasets", ",".join(TWO)) as srv:
        token = Browserless(srv.url, "Study").token()
        common = ("--server", srv.url, "--token", token, *common)
        # two runs per dataset (knn, LoRA): refused in one line that says how to pick
        code, out, err = run(capsys, "submit", str(path), *common)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "has 2 finished runs of breastmnist at 28 px" in err and "--select mode=finetune-lora|knn" in err
        # kNN: the runs' own predictions.csv, re-exported as `fmeval predict --run` does
        code, out, err = run(capsys, "submit", str(path), *common, "--select", "mode=knn")
        assert code == 0, err
        assert "2 datasets at 28 px, complete" in out and "breastmnist: " in out
        got, sid = _submitted(srv.url, out)
        import httpx

        assert sid in [r["id"] for r in httpx.get(srv.url + "/api/leaderboard").json()["rows"]]
        want = _results(reports, "knn")
        for flag in TWO:
            for metric in ("acc", "auc", "balanced_acc"):
                assert got[flag][metric] == want[flag][metric], (flag, metric)
        assert got["breastmnist"]["kappa"] == pytest.approx(want["breastmnist"]["kappa"], abs=1e-12)
        # LoRA runs whose folders lost predictions.csv: predicted again from their adapters (fmeval predict --adapter)
        for d in _run_dirs(reports, "finetune-lora"):
            (d / "predictions.csv").unlink()
        code, out, err = run(capsys, "submit", str(path), *common,
                             "--select", "mode=finetune-lora", "--select", "seed=0")
        assert code == 0, err
        assert out.count("predicted again from the adapter") == 2, out
        got, _ = _submitted(srv.url, out)
        want = _results(reports, "finetune-lora")
        for flag in TWO:
            for metric in ("acc", "auc", "balanced_acc"):
                assert got[flag][metric] == pytest.approx(want[flag][metric], abs=1e-6), (flag, metric)


def test_submit_a_study_refuses_bad_input_in_one_line(study, capsys, tmp_path, monkeypatch):
    path, reports = study
    base = ("--server", "http://127.0.0.1:9", "--token", "fmv_" + "x" * 40, "--model-name", "m",
            "--reports-dir", str(reports))
    knn_dir = _run_dirs(reports, "knn")[0]
    cases = [
        (("no-such-study",), "no-such-study is neither a folder of predictions nor a study"),
        ((str(path), "--select", "colour=red"), "'colour' is not a study axis"),
        ((str(path), "--select", "mode"), "expected AXIS=VALUE"),
        ((str(path), "--select", "mode=zeroshot"), "the study's finished runs have mode finetune-lora, knn"),
        ((str(path), "--select", "mode=knn", "--size", "64"), "no finished run at 64 px"),
        ((str(path), "--reports-dir", str(tmp_path / "empty"), "--select", "mode=knn"),
         "has no finished runs under"),
        ((str(reports), "--select", "mode=knn"), "--select picks runs of a study"),
    ]
    for argv, msg in cases:
        code, out, err = run(capsys, "submit", *argv, *base[:6], *([] if "--reports-dir" in argv else base[6:]))
        assert code == 2 and msg in " ".join(err.split()) and len(err.strip().splitlines()) == 1, (argv, err)
    # a frozen run without predictions.csv has no adapter to predict again: re-run it
    moved = knn_dir / "predictions.csv"
    moved.rename(knn_dir / "kept.csv")
    try:
        code, out, err = run(capsys, "submit", str(path), *base, "--select", "mode=knn")
        assert code == 2 and "has no predictions.csv and no fine-tuned adapter" in " ".join(err.split()), err
    finally:
        (knn_dir / "kept.csv").rename(moved)
