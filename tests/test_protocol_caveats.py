"""Issue 22 item 2 (declared, not reproduced): under medmnist-plus, a linear probe of a BatchNorm/dropout
CNN records in its own report that the reference trains the probe with the backbone in train() mode."""

from __future__ import annotations

import pytest

from fmeval.modes.base import protocol_record
from fmeval.protocols import load_protocol
from fmeval.runner import make_config
from helpers import only_report, run

PLUS = {"protocol": "medmnist-plus", "dataset": "pneumoniamnist"}


@pytest.mark.parametrize("mode,model,expected", [
    ("linprobe", "resnet18", True), ("linprobe", "tv-alexnet", True), ("linprobe", "efficientnet-b4", True),
    ("linprobe", "vit-b16", False), ("knn", "resnet18", False), ("finetune-full", "resnet18", False),
])
def test_caveat_is_recorded_only_for_the_runs_it_applies_to(mode, model, expected):
    rec = protocol_record(make_config(mode, {**PLUS, "model": model}))
    assert bool(rec.get("caveats")) == expected
    if expected:
        assert "train() mode" in rec["caveats"][0]
    assert any("train() mode" in s for s in load_protocol("medmnist-plus").spec.silent)


@pytest.mark.slow
def test_cli_linprobe_report_states_the_caveat(capsys, tmp_path, pneumonia_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "linprobe", "--protocol", "medmnist-plus", "--model", "resnet18", "--tiny",
                         "--dataset", "pneumoniamnist", "--data-root", str(pneumonia_root), "--limit", "24",
                         "--epochs", "2", "--bootstrap", "10", "--reports-dir", str(tmp_path / "r"))
    assert code == 0, err
    res = only_report(tmp_path / "r")
    assert "train() mode" in res["protocol"]["caveats"][0]
    assert "Known difference from the source" in (tmp_path / "r" / res["run_id"] / "report.md").read_text()
