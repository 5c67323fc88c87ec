"""Every mode enters through one door, :func:`fmeval.pipeline.prepare` (issue 19).

The frozen modes and fine-tuning used to prepare data and encoders in two
pipelines; these tests type the commands and count the calls of the one that
remains, so a mode that grows its own preparation again fails here.
"""

from __future__ import annotations

import pytest
from pathlib import Path

from helpers import only_report, run

from fmeval.data.synthetic import write_synthetic


@pytest.fixture
def calls(monkeypatch):
    import fmeval.pipeline as pipeline

    seen: list[tuple[str, bool]] = []
    real = pipeline.prepare

    def counting(cfg, *args, **kwargs):
        seen.append((cfg.mode, kwargs.get("frozen", True)))
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(pipeline, "prepare", counting)
    return seen


@pytest.fixture
def data(tmp_path, monkeypatch):
    root = write_synthetic(tmp_path / "data", "pneumoniamnist", n=(40, 20, 20)).parent
    monkeypatch.chdir(tmp_path)
    return str(root)


COMMON = ("--model", "vit-s16", "--tiny", "--dataset", "pneumoniamnist", "--bootstrap", "10")


def test_knn_passes_through_prepare(capsys, calls, data):
    code, _, err = run(capsys, "knn", *COMMON, "--data-root", data, "--k", "3")
    assert code == 0, err
    assert calls == [("knn", True)]


def test_finetune_lora_passes_through_prepare(capsys, calls, data):
    code, _, err = run(capsys, "finetune", "--lora", *COMMON, "--data-root", data, "--epochs", "1",
                       "--max-steps-per-epoch", "1")
    assert code == 0, err
    assert calls == [("finetune-lora", False)]
    from fmeval.device import precision_rule

    rep = only_report(Path(data).parent / "reports")  # fine-tuned runs say which precision rule applied too
    assert rep["extras"]["precision_rule"] == precision_rule("auto", "cpu", rep["model"]["family"])


def test_linprobe_and_fewshot_knn_pass_through_prepare(capsys, calls, data):
    assert run(capsys, "linprobe", *COMMON, "--data-root", data, "--epochs", "2")[0] == 0
    assert run(capsys, "knn", *COMMON, "--data-root", data, "--shots", "2", "--k", "1")[0] == 0
    assert calls == [("linprobe", True), ("knn", True)]
