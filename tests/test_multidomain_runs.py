"""Multi-domain training end to end (issue 24): the command as typed, resume, leaderboard, test labels.

Real PneumoniaMNIST, BreastMNIST and RetinaMNIST (../shared/data) plus a generated
multi-label file in the MedMNIST layout (ChestMNIST's 14 findings), trained together
under ``--protocol mm-pt`` with a tiny random ViT. The protocol's 224 px canvas is
replaced by 32 px and the splits by 96-image subsets (both recorded deviations) so
a run takes seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import require_shared
from fmeval.data.synthetic import synthetic_arrays, write_synthetic
from fmeval.io import atomic_path
from fmeval.runner import execute, make_config
from helpers import run, show_protocol

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = ("pneumoniamnist", "breastmnist", "retinamnist")
DATASETS = REAL + ("chestmnist",)
FAST = ("--canvas", "32", "--input-size", "32", "--limit", "96", "--bootstrap", "20", "--md5", "off")


pytestmark = pytest.mark.usefixtures("quiet_one_thread")


@pytest.fixture(scope="module")
def md_root(tmp_path_factory) -> Path:
    """The three real files (linked) and a generated multi-label one, in one data folder."""
    root = tmp_path_factory.mktemp("md-data")
    for flag in REAL:
        (root / f"{flag}.npz").symlink_to(require_shared(SHARED / f"{flag}.npz"))
    write_synthetic(root, "chestmnist", 28, (120, 60, 60), seed=5)
    return root


def _argv(root: Path, reports: Path, *extra: str) -> list[str]:
    return ["finetune", "--full", "--protocol", "mm-pt", "--model", "vit-s16", "--tiny", "--datasets",
            ",".join(DATASETS), "--epochs", "2", *FAST, "--data-root", str(root), "--reports-dir", str(reports),
            *extra]


def _reports(root: Path) -> dict[str, dict]:
    out = {}
    for path in root.glob("*/results.json"):
        r = json.loads(path.read_text())
        out[r["dataset"]["flag"]] = r
    return out


@pytest.mark.slow
def test_mm_pt_command_resumes_to_the_same_result_and_ranks_per_dataset(capsys, md_root, tmp_path, monkeypatch):
    from fmeval.report.leaderboard import leaderboard

    # 1. interrupted after epoch 1 (as if killed), then resumed from its folder alone
    monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / "a1"))
    monkeypatch.setenv("FMEVAL_FT_STOP_AFTER_EPOCH", "1")
    code, out, err = run(capsys, *_argv(md_root, tmp_path / "r1"))
    assert code != 0 and "--resume" in err + out, err
    (folder,) = (tmp_path / "a1").iterdir()
    assert not list((tmp_path / "r1").glob("*/results.json"))  # nothing reported before training ends
    monkeypatch.delenv("FMEVAL_FT_STOP_AFTER_EPOCH")
    code, out, err = run(capsys, "finetune", "--resume", str(folder), "--reports-dir", str(tmp_path / "r1"))
    assert code == 0, err
    assert "test mean over datasets" in out
    resumed = _reports(tmp_path / "r1")

    # 2. the same command, uninterrupted
    monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / "a2"))
    code, out, err = run(capsys, *_argv(md_root, tmp_path / "r2"))
    assert code == 0, err
    straight = _reports(tmp_path / "r2")

    assert set(resumed) == set(straight) == set(DATASETS)
    run_ids = {r["extras"]["multidomain"]["run_id"] for r in resumed.values()}
    assert run_ids == {folder.name}  # one shared marker: one model behind the four reports
    for flag in DATASETS:
        a, b = resumed[flag], straight[flag]
        assert a["mode"] == "multidomain-full" and a["config"]["dataset"] == flag
        assert a["extras"]["multidomain"]["test_scores_sha256"] == b["extras"]["multidomain"]["test_scores_sha256"]
        assert a["extras"]["curves"] == b["extras"]["curves"]
        assert a["test"]["metrics"]["auc"]["value"] == b["test"]["metrics"]["auc"]["value"]
        assert a["extras"]["training"]["resumed_at_epoch"] == 1 and b["extras"]["training"]["resumed_at_epoch"] is None
        # an ordinary report: CIs and the majority baseline of this dataset's training labels
        auc = a["test"]["metrics"]["auc"]
        assert auc["ci_low"] <= auc["value"] <= auc["ci_high"] and "acc" in a["test"]["baseline"]
        # the protocol's settings, and every way this run differs from them, recorded
        p = a["protocol"]
        assert p["name"] == "mm-pt" and a["seed"] == 9930641
        assert "multidomain.datasets=" + ",".join(sorted(DATASETS)) in p["deviations"]
        assert {"canvas=32", "input_size=32", "limit=96", "train.epochs=2", "tiny=True"} <= set(p["deviations"])
        assert a["config"]["train"]["patience"] == 10 and a["config"]["train"]["select_metric"] == "loss"
        assert a["config"]["train"]["schedule"] == "cosine-epoch" and a["transform"]["geometry"] == "pad"
    assert resumed["chestmnist"]["dataset"]["task"].startswith("multi-label")
    heads = {d["flag"]: d["n_outputs"] for d in json.loads((folder / "run.json").read_text())["datasets"]}
    assert heads == {"pneumoniamnist": 2, "breastmnist": 2, "retinamnist": 5, "chestmnist": 14}  # one head each
    sched = resumed["retinamnist"]["extras"]["multidomain"]
    assert sched["train_batches"] == {"pneumoniamnist": 2, "breastmnist": 2, "retinamnist": 2, "chestmnist": 2}
    assert sched["steps_per_epoch"] == 8

    # 3. the leaderboard ranks each per-dataset run in its own dataset's table, marked
    board = leaderboard(tmp_path / "r1", include_all=True)
    assert {ds for ds, _ in board.groups()} == set(DATASETS)
    assert all(row["multidomain"] == folder.name and row["mode"] == "multidomain-full"
               for row in board.rows + board.excluded)
    assert f"multi-domain run `{folder.name}`" in board.to_markdown()


def _write(root: Path, name: str, arrays: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(root / f"{name}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def test_garbage_test_labels_change_no_choice_and_no_test_score(tmp_path, monkeypatch):
    """The invariant of tests/test_test_labels_unused.py for a multi-domain run: both datasets'
    test labels replaced by garbage move no epoch, no validation number, no test score."""
    roots = {"clean": tmp_path / "clean", "garbage": tmp_path / "garbage"}
    rng = np.random.default_rng(99)
    for i, flag in enumerate(("pneumoniamnist", "retinamnist")):
        arrays = synthetic_arrays(flag, 28, (40, 20, 30), seed=i)
        _write(roots["clean"], flag, arrays)
        garbage = dict(arrays)
        garbage["test_labels"] = rng.integers(0, 2 if i == 0 else 5, arrays["test_labels"].shape).astype(np.uint8)
        _write(roots["garbage"], flag, garbage)
    out = {}
    for name, root in roots.items():
        monkeypatch.setenv("FMEVAL_ADAPTERS_DIR", str(tmp_path / f"adapters-{name}"))
        for flag in ("pneumoniamnist", "retinamnist"):
            cfg = make_config("multidomain-full", {
                "model": "resnet18", "dataset": flag, "tiny": True, "pretrained": False, "input_size": 32,
                "multidomain.datasets": ("pneumoniamnist", "retinamnist"), "n_boot": 20, "data_root": str(root),
                "md5": "off", "train.epochs": 3, "train.patience": 1, "train.lr": 0.003, "train.batch_size": 16,
                "adapter_dir": str(tmp_path / f"adapters-{name}" / "run")})
            out[(name, flag)] = execute(cfg, write=False)
    for flag in ("pneumoniamnist", "retinamnist"):
        clean, garbage = out[("clean", flag)], out[("garbage", flag)]
        keep = lambda r: {"selection": r.selection, "val": r.val.to_dict(), "curves": r.extras["curves"],  # noqa: E731
                          "training": {k: r.extras["training"][k] for k in ("best_epoch", "epochs_run",
                                                                              "stopped_early")},
                          "config_hash": r.config_hash}
        assert keep(clean) == keep(garbage)
        np.testing.assert_array_equal(clean.test_scores, garbage.test_scores)
        assert clean.test.to_dict()["confusion"] != garbage.test.to_dict()["confusion"]
        assert clean.extras["curves"]["val_loss"]  # validation really selected something


@pytest.mark.parametrize("argv,needle", [
    (["--dataset", "pneumoniamnist", "--datasets", "pneumoniamnist,breastmnist"], "not both"),
    (["--datasets", "pneumoniamnist"], "at least two datasets"),
    (["--dataset", "pneumoniamnist", "--domain-bn"], "add --datasets"),
    (["--datasets", "pneumoniamnist,breastmnist", "--domain-weights", "sqrt"], "--domain-weights"),
    (["--datasets", "pneumoniamnist,breastmnist", "--ordinal-loss", "coral"], "--ordinal-loss"),
    (["--datasets", "pneumoniamnist,pneumoniamnist"], "twice"),
])
def test_bad_multidomain_options_are_one_line_and_exit_2(capsys, tmp_path, argv, needle):
    code, out, err = run(capsys, "finetune", "--full", "--model", "resnet18", "--tiny", *argv,
                         "--reports-dir", str(tmp_path / "r"))
    assert code == 2 and needle in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_domain_bn_with_lora_is_refused_before_work(capsys, tmp_path):
    code, out, err = run(capsys, "finetune", "--lora", "--model", "resnet18", "--tiny", "--datasets",
                         "pneumoniamnist,breastmnist", "--domain-bn", "--reports-dir", str(tmp_path / "r"))
    assert code == 2 and "--domain-bn needs --full" in err


def test_the_new_section_leaves_other_modes_hashes_alone():
    cfg = make_config("finetune-full", {"model": "resnet18", "dataset": "pneumoniamnist", "tiny": True})
    from fmeval.modes import MODES

    assert "multidomain" not in cfg.semantic_dict(MODES.get("finetune-full").sections)
    md = make_config("multidomain-full", {"model": "resnet18", "dataset": "pneumoniamnist", "tiny": True,
                                          "multidomain.datasets": ("pneumoniamnist", "breastmnist")})
    other = md.with_values({"dataset": "breastmnist"})
    assert md.digest(MODES.get("multidomain-full").sections) != other.digest(MODES.get("multidomain-full").sections)


def test_multidomain_is_a_study_mode_trained_once_for_the_set(capsys, tmp_path, monkeypatch):
    """A study's multidomain-full cells (one per dataset) share one model folder: the first
    cell trains it, the others score their dataset with it; both land in the study's runs."""
    import yaml

    import fmeval.modes.multidomain as md_mode

    data = tmp_path / "data"
    write_synthetic(data, "pneumoniamnist", 28, (40, 20, 20), seed=0)
    write_synthetic(data, "retinamnist", 28, (40, 20, 20), seed=1)
    spec = {"name": "md", "settings": {"tiny": True, "n_boot": 20, "data_root": str(data), "md5": "off",
                                       "input_size": 32, "train.epochs": 1, "train.batch_size": 16},
            "axes": {"models": ["resnet18"], "datasets": ["pneumoniamnist", "retinamnist"], "sizes": [28],
                     "modes": ["multidomain-full"], "seeds": [0]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    trained = []
    real_train = md_mode._train
    monkeypatch.setattr(md_mode, "_train", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    monkeypatch.setattr(md_mode, "_LAST", None)
    code, out, err = run(capsys, "study", "run", str(path), "--reports-dir", str(tmp_path / "r"))
    assert code == 0, err
    assert len(trained) == 1
    results = [json.loads(p.read_text()) for p in (tmp_path / "r" / "studies" / "md" / "runs").glob("*/results.json")]
    assert sorted(r["dataset"]["flag"] for r in results) == ["pneumoniamnist", "retinamnist"]
    assert len({r["extras"]["multidomain"]["run_id"] for r in results}) == 1
    assert all(r["config"]["multidomain"]["datasets"] == ["pneumoniamnist", "retinamnist"] for r in results)
    # another process (the in-memory model forgotten) reads the finished model back from its folder
    monkeypatch.setattr(md_mode, "_LAST", None)
    cfg = make_config("multidomain-full", {**{k: v for k, v in spec["settings"].items()}, "model": "resnet18",
                                           "dataset": "retinamnist", "seed": 0,
                                           "multidomain.datasets": ("pneumoniamnist", "retinamnist"),
                                           "adapter_dir": results[0]["extras"]["training"]["adapter_path"]})
    again = execute(cfg, write=False)
    assert len(trained) == 1  # read back, not trained again
    assert not any("test scores differ" in w for w in again.warnings)
    want = [r for r in results if r["dataset"]["flag"] == "retinamnist"][0]
    assert again.extras["multidomain"]["test_scores_sha256"] == want["extras"]["multidomain"]["test_scores_sha256"]


@pytest.mark.parametrize("mode,model,extra", [
    ("multidomain-lora", "vit-s16", {}),
    ("multidomain-full", "resnet18", {"multidomain.domain_bn": True, "multidomain.domain_weights": "size",
                                      "multidomain.ordinal_loss": "sord"}),
])
def test_saved_model_reads_back_to_the_same_scores(tmp_path, monkeypatch, mode, model, extra):
    """LoRA (adapters + every head) and full fine-tuning with per-dataset BatchNorm statistics: a
    process that did not train reads the model from its folder and scores every dataset exactly
    as at the end of training."""
    import fmeval.modes.multidomain as md_mode

    data = tmp_path / "data"
    write_synthetic(data, "pneumoniamnist", 28, (40, 20, 20), seed=0)
    write_synthetic(data, "retinamnist", 28, (40, 20, 20), seed=1)
    base = {"model": model, "tiny": True, "n_boot": 0, "data_root": str(data), "md5": "off", "input_size": 32,
            "train.epochs": 1, "train.batch_size": 16, "multidomain.datasets": ("pneumoniamnist", "retinamnist"),
            "adapter_dir": str(tmp_path / "run"), **extra}
    first = {d: execute(make_config(mode, {**base, "dataset": d}), write=False) for d in ("pneumoniamnist", "retinamnist")}
    monkeypatch.setattr(md_mode, "_LAST", None)
    for d in ("retinamnist", "pneumoniamnist"):
        again = execute(make_config(mode, {**base, "dataset": d}), write=False)
        np.testing.assert_array_equal(again.test_scores, first[d].test_scores)
        assert not any("differ" in w for w in again.warnings)
    md = first["retinamnist"].extras["multidomain"]
    assert md["domain_bn"] == bool(extra) and md["ordinal_loss"] == extra.get("multidomain.ordinal_loss")
    if extra:  # 3 train batches of 16 each; 2 val batches each: every weight 1
        assert md["train_weight"] == 1.0 and md["domain_weights"] == "size"


def test_mm_pt_protocol_shows_every_setting_with_its_source_and_conforms_as_published(capsys):
    p, out, flat = show_protocol(capsys, "mm-pt", "multidomain")
    assert "9930641" in out and "8,104" in flat
    # the published configuration: both models, all 12 datasets, every size - no deviation
    for model in ("vit-b16", "resnet18"):
        for size in (28, 224):
            cfg = make_config("multidomain-full", {"protocol": "mm-pt", "model": model, "dataset": "chestmnist",
                                                   "size": size, "multidomain.datasets": p.spec.datasets.value})
            assert cfg.deviations == () and cfg.seed == 9930641
            assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.patience, cfg.train.batch_size) == (1e-4, 0.01, 10, 64)
            assert (cfg.train.schedule, cfg.train.epochs, cfg.train.select_metric) == ("cosine-epoch", 100, "loss")
            assert (cfg.geometry, cfg.canvas, cfg.input_size, cfg.multidomain.domain_bn) == ("pad", 224, 224, False)
    from fmeval.modes.multidomain import expand_datasets

    typed = make_config("multidomain-full", {"protocol": "mm-pt", "model": "vit-b16", "dataset": "pathmnist",
                                             "multidomain.datasets": expand_datasets(["all-2d"])})
    assert typed.deviations == ()  # --datasets all-2d is the protocol's set, whatever the order
    weighted = make_config("multidomain-full", {"protocol": "mm-pt", "model": "vit-b16", "dataset": "chestmnist",
                                                "multidomain.datasets": p.spec.datasets.value,
                                                "multidomain.domain_weights": "size"})
    assert weighted.deviations == ("multidomain.domain_weights=size",)


def test_mm_pt_study_plans_one_training_per_model_and_size(tmp_path):
    from fmeval.studies.executors import slurm_tasks
    from fmeval.studies.plan import plan_study
    from fmeval.studies.spec import load_study

    spec, digest = load_study(Path(__file__).resolve().parents[1] / "studies" / "mm-pt.yaml")
    plan = plan_study(spec, digest, reports_root=tmp_path)
    assert len(plan.cells) == 2 * 12 * 4
    assert len({c.config.adapter_dir for c in plan.cells}) == 2 * 4  # 8 trainings, 12 reports each
    assert all(c.config.deviations == () and c.config.protocol == "mm-pt" for c in plan.cells)
    tasks = slurm_tasks(plan)  # a Slurm task holds one training's cells: trained once, then 11 scorings
    assert sorted(len(t) for t in tasks) == [12] * 8
    assert all(len({c.config.adapter_dir for c in t}) == 1 for t in tasks)
