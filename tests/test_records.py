"""What a result records about itself: cache key, code version, schema; and prompt-bank errors (issue 14)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from fmeval.cache import key_digest
from fmeval.config import RunConfig
from fmeval.data.synthetic import write_synthetic
from fmeval.data.transforms import ImageTransform
from fmeval.errors import PromptBankError
from fmeval.pipeline import feature_key, prepare_frozen
from fmeval.prompts import PromptBank
from fmeval.provenance import git_info
from fmeval.report import SCHEMA_KEYS, SCHEMA_VERSION, RunResult

DATA = Path(__file__).parent / "data"
V1_FILE = DATA / "results_schema_v1.json"


# --------------------------------------------------------------------------- #
# The feature cache key holds the whole pixel pipeline
# --------------------------------------------------------------------------- #
def _key(**transform) -> dict:
    base = dict(input_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic")
    adapter = SimpleNamespace(name="dinov2-vits14", weights_id="hub:dinov2_vits14", code_version="1")
    data = SimpleNamespace(flag="pneumoniamnist", size=28, md5="0" * 32)
    cfg = RunConfig(mode="knn", model="dinov2-vits14", dataset="pneumoniamnist")
    return feature_key(adapter, data, "train", cfg, ImageTransform(**{**base, **transform}), "fp32")


@pytest.mark.parametrize("change", [
    {"input_size": 448},
    {"mean": (0.485, 0.456, 0.406)},
    {"std": (0.229, 0.224, 0.225)},
    {"interpolation": "bilinear"},
    {"geometry": "pad", "canvas": 224},
    {"grayscale": True},
])
def test_feature_key_changes_with_the_preprocessing_even_for_the_same_weights(change):
    """Pretrained weights have one weights_id whatever --input-size: the key must still differ."""
    same = _key()
    assert key_digest(same) == key_digest(_key())
    other = _key(**change)
    assert other["weights_id"] == same["weights_id"]
    assert key_digest(other) != key_digest(same)
    assert other["transform"] == ImageTransform(**{**dict(input_size=224, mean=(0.5,) * 3, std=(0.5,) * 3,
                                                         interpolation="bicubic"), **change}).as_dict()


@pytest.mark.parametrize("change", [{"interpolation": "bilinear"}, {"norm": "imagenet"}])
def test_cache_misses_when_only_the_preprocessing_changes(tmp_path, change):
    """Tiny random weights keep the same weights_id across --interpolation/--norm: only the transform
    in the key tells the two feature sets apart."""
    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(12, 6, 6))
    cfg = RunConfig(mode="knn", model="vit-b16", dataset="pneumoniamnist", data_root=str(tmp_path), tiny=True,
                    pretrained=False, batch_size=16)
    first = prepare_frozen(cfg, splits=("train",))
    other = prepare_frozen(cfg.with_values(change), splits=("train",))
    assert other.adapter.weights_id == first.adapter.weights_id
    assert other.cache_hits == {"train": False}
    again = prepare_frozen(cfg, splits=("train",))
    assert again.cache_hits == {"train": True}


# --------------------------------------------------------------------------- #
# Provenance: the commit is the checkout's HEAD
# --------------------------------------------------------------------------- #
def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_provenance_commit_is_rev_parse_head_of_a_checkout(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    pkg = repo / "fmeval"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    head = _git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert git_info(pkg) == {"commit": head, "dirty": False}
    (pkg / "__init__.py").write_text("x = 2\n")
    assert git_info(pkg) == {"commit": head, "dirty": True}
    (tmp_path / "loose").mkdir()
    assert git_info(tmp_path / "loose") == {"commit": None, "dirty": None}


def test_provenance_of_this_checkout_names_its_head():
    import fmeval

    pkg = Path(fmeval.__file__).resolve().parent
    try:
        tracked = _git(pkg, "ls-files", "--error-unmatch", "__init__.py")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("fmeval is not imported from a git checkout (an installed copy)")
    assert tracked
    assert git_info()["commit"] == _git(pkg, "rev-parse", "HEAD")


# --------------------------------------------------------------------------- #
# results.json: golden keys per schema version; a version-1 file still loads
# --------------------------------------------------------------------------- #
#: Written out by hand: renaming, adding or removing a top-level key of results.json
#: must come with a new SCHEMA_VERSION (and a new entry here), never by editing an entry.
GOLDEN_KEYS = {
    1: ("schema_version", "run_id", "mode", "created", "wall_time_s", "model", "dataset", "geometry",
        "seed", "config", "test", "val", "extras", "provenance", "warnings"),
    2: ("schema_version", "run_id", "mode", "created", "wall_time_s", "model", "dataset", "geometry",
        "seed", "config", "config_hash", "protocol", "transform", "precision", "selection", "test", "val",
        "extras", "provenance", "warnings"),
}
GOLDEN_SPLIT_KEYS = ("task", "n", "class_names", "metrics", "baseline", "per_class", "confusion", "warnings",
                     "reliability", "n_boot", "ci", "seed")
GOLDEN_METRIC_KEYS = ("value", "ci_low", "ci_high", "n_boot")


def test_results_keys_change_only_with_a_schema_version_bump():
    assert SCHEMA_KEYS == GOLDEN_KEYS, "a results.json key changed: bump SCHEMA_VERSION and add a golden entry"
    assert SCHEMA_VERSION == max(GOLDEN_KEYS)
    v1 = json.loads(V1_FILE.read_text())
    assert tuple(v1) == GOLDEN_KEYS[1] and tuple(v1["test"]) == GOLDEN_SPLIT_KEYS
    d = RunResult.load(V1_FILE).to_dict()  # what this version writes
    assert tuple(d) == GOLDEN_KEYS[SCHEMA_VERSION] and d["schema_version"] == SCHEMA_VERSION
    for split in ("test", "val"):
        assert tuple(d[split]) == GOLDEN_SPLIT_KEYS
        assert all(tuple(m) == GOLDEN_METRIC_KEYS for m in d[split]["metrics"].values())


def test_golden_schema_v1_results_still_load():
    """tests/data/results_schema_v1.json was written by fmeval at schema version 1 (a tiny kNN run)."""
    raw = json.loads(V1_FILE.read_text())
    assert raw["schema_version"] == 1
    r = RunResult.load(V1_FILE)
    assert r.schema_version == 1 and r.run_id == raw["run_id"] and r.mode == "knn"
    assert r.report_dir == str(DATA)
    assert r.transform == raw["model"]["preprocess"]  # version 1 kept the pixel pipeline in the model record
    assert r.selection == {} and r.protocol is None and r.config_hash == "" and r.precision == ""
    assert r.test.metrics["auc"].value == raw["test"]["metrics"]["auc"]["value"]
    assert r.test.baseline == raw["test"]["baseline"] and r.val.n == raw["val"]["n"]
    assert r.to_dict()["test"] == raw["test"]  # the split reports read back unchanged
    assert RunResult.from_dict(r.to_dict()).to_dict() == r.to_dict()


def test_report_command_ranks_a_schema_v1_run(tmp_path, capsys):
    from fmeval.cli import main

    run = tmp_path / "reports" / "old-run"
    run.mkdir(parents=True)
    shutil.copy(V1_FILE, run / "results.json")
    with pytest.raises(SystemExit) as exc:
        main(["report", "--reports-dir", str(tmp_path / "reports"), "--all"])
    out = capsys.readouterr()
    assert exc.value.code == 0, out.err
    assert "skipped" not in out.err
    assert "vit-b16" in (tmp_path / "reports" / "leaderboard.csv").read_text()


def test_results_from_a_newer_schema_are_refused_clearly():
    raw = json.loads(V1_FILE.read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    from fmeval.report.schema import ReportError

    with pytest.raises(ReportError, match=f"schema_version {SCHEMA_VERSION + 1} is newer"):
        RunResult.from_dict(raw)


# --------------------------------------------------------------------------- #
# Prompt banks: a missing class and a style that skips a class are bank errors
# --------------------------------------------------------------------------- #
def _bank_doc() -> dict:
    return {
        "dataset": "pneumoniamnist", "version": "1", "default_style": "plain",
        "classes": {"0": {"name": "normal", "display": "normal lungs"},
                    "1": {"name": "pneumonia", "display": "pneumonia"}},
        "styles": {"plain": {"templates": ["a chest X-ray showing {class}"]},
                   "medical": {"prompts": {"0": ["clear lungs"], "1": ["lobar consolidation"]}}},
    }


def test_bank_missing_a_class_names_that_class_first():
    doc = _bank_doc()
    del doc["classes"]["1"], doc["styles"]["medical"]["prompts"]["1"]
    with pytest.raises(PromptBankError) as exc:
        PromptBank.from_dict(doc, source="bank.yaml")
    assert str(exc.value) == "bank.yaml: classes: missing class(es) '1' ('pneumonia') of pneumoniamnist"


def test_bank_missing_a_class_that_a_style_still_lists():
    doc = _bank_doc()
    del doc["classes"]["0"]
    with pytest.raises(PromptBankError, match=r"^bank\.yaml: classes: missing class\(es\) '0' \('normal'\)"):
        PromptBank.from_dict(doc, source="bank.yaml")


@pytest.mark.parametrize("skipped", ["0", "1"])
def test_style_skipping_a_class_is_a_bank_error_not_a_key_error(skipped):
    doc = _bank_doc()
    del doc["styles"]["medical"]["prompts"][skipped]
    name = {"0": "normal", "1": "pneumonia"}[skipped]
    with pytest.raises(PromptBankError) as exc:
        PromptBank.from_dict(doc, source="bank.yaml")
    assert str(exc.value) == f"bank.yaml: styles.medical.prompts: missing class(es) '{skipped}' ('{name}')"
