"""Damaged or foreign files a user hands fmeval end in one error line (exit 2), never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fmeval.cli import main
from fmeval.data.synthetic import write_synthetic
from helpers import run


def one_error(code: int, out: str, err: str) -> str:
    """The single error line of a failed command (asserting there is exactly one)."""
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One finished LoRA and one full fine-tuning run (tiny ResNet-18, synthetic data, 1 epoch)."""
    root = tmp_path_factory.mktemp("ft")
    write_synthetic(root / "data", "pneumoniamnist", 28, n=(20, 10, 10))
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"FMEVAL_ADAPTERS_DIR": root / "adapters", "FMEVAL_CACHE_DIR": root / "cache",
                     "FMEVAL_REPORTS_DIR": root / "reports", "FMEVAL_PROGRESS": "0"}.items():
            mp.setenv(k, str(v))
        for method in ("lora", "full"):
            args = ("finetune", f"--{method}", "--model", "resnet18", "--tiny", "--dataset",
                    "pneumoniamnist", "--data-root", str(root / "data"), "--epochs", "1",
                    "--train-batch-size", "8", "--bootstrap", "0")
            with pytest.raises(SystemExit) as exc:
                main(list(args))
            assert exc.value.code == 0
            (folder,) = (root / "adapters").glob(f"*finetune-{method}*")
            out[method] = (folder, args)
    return out


@pytest.fixture
def copy_run(runs, tmp_path):
    def copy(method: str) -> Path:
        dst = tmp_path / f"run-{method}"
        shutil.copytree(runs[method][0], dst)
        return dst

    return copy


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("method,name", [
    ("lora", "adapter_model.safetensors"),
    ("lora", "head.safetensors"),
    ("full", "model.safetensors"),
    ("full", "head.safetensors"),
])
def test_evaluate_with_truncated_weights(capsys, copy_run, method, name):
    folder = copy_run(method)
    code, out, err = run(capsys, "evaluate", "--adapter", str(folder))
    assert code == 0, err  # the intact copy evaluates
    _truncate(folder / name)
    line = one_error(*run(capsys, "evaluate", "--adapter", str(folder)))
    assert name in line and "damaged" in line


def test_evaluate_with_broken_lora_config(capsys, copy_run):
    folder = copy_run("lora")
    (folder / "adapter_config.json").write_text("{\"r\": 8,")
    line = one_error(*run(capsys, "evaluate", "--adapter", str(folder)))
    assert "LoRA adapter" in line


@pytest.mark.parametrize("where", ["config", "config.train", "config.lora"])
def test_run_json_from_a_newer_fmeval(capsys, copy_run, where):
    folder = copy_run("lora")
    rec = json.loads((folder / "run.json").read_text())
    section = rec
    for part in where.split("."):
        section = section[part]
    section["shiny_new_option"] = 3
    (folder / "run.json").write_text(json.dumps(rec))
    line = one_error(*run(capsys, "evaluate", "--adapter", str(folder)))
    assert "shiny_new_option" in line and "newer fmeval" in line


@pytest.mark.parametrize("text", ["[1, 2]", "{\"format\": \"fmeval-finetune/1\"}", "\xff\xfe{"])
def test_run_json_damaged(capsys, copy_run, text):
    folder = copy_run("lora")
    (folder / "run.json").write_bytes(text.encode("latin-1"))
    one_error(*run(capsys, "evaluate", "--adapter", str(folder)))


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_resume_with_a_damaged_train_state(capsys, runs, copy_run, damage):
    folder = copy_run("lora")
    state = folder / "train_state.pt"
    if damage == "truncated":
        _truncate(state)
    else:
        torch.save({"epoch": 0, "weights": torch.ones(2)}, state)
    args = runs["lora"][1]
    line = one_error(*run(capsys, *args, "--resume", str(folder)))
    assert "train_state.pt" in line


@pytest.fixture
def clip_folder(tmp_path):
    from fmeval.adapters.openclip import tiny_biomedclip_folder

    dst = tmp_path / "biomedclip"
    shutil.copytree(tiny_biomedclip_folder(), dst)
    write_synthetic(tmp_path / "data", "pneumoniamnist", 28, n=(10, 5, 5))
    return dst


def _zeroshot(folder: Path) -> tuple[str, ...]:
    return ("zeroshot", "--model", "biomedclip", "--weights", str(folder), "--dataset",
            "pneumoniamnist", "--data-root", str(folder.parent / "data"), "--bootstrap", "0")


@pytest.mark.parametrize("text,expect", [
    ("{\"model_cfg\": {\"embed_dim\": 32,", "not valid JSON"),
    ("[]", "not an open_clip config"),
    (json.dumps({"model_cfg": {"embed_dim": 32, "text_cfg": {}}}), "incomplete: model_cfg has no vision_cfg"),
])
def test_zeroshot_with_broken_open_clip_config(capsys, clip_folder, text, expect):
    (clip_folder / "open_clip_config.json").write_text(text)
    line = one_error(*run(capsys, *_zeroshot(clip_folder)))
    assert expect in line and "open_clip_config.json" in line


def test_open_clip_config_open_clip_cannot_build(clip_folder):
    from fmeval.adapters import create_adapter
    from fmeval.errors import ModelError

    cfg = json.loads((clip_folder / "open_clip_config.json").read_text())
    cfg["model_cfg"]["vision_cfg"] = {"timm_model_name": "no_such_timm_model"}
    (clip_folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="cannot build an open_clip model from .*no_such_timm_model"):
        create_adapter("biomedclip", weights=clip_folder)


def test_resume_tolerates_options_added_after_the_run_started():
    from fmeval.training.checkpoint import config_differences

    saved = {"model": "vit-s16", "train": {"lr": 1e-4}}
    now = {"model": "vit-s16", "allow_partial": False, "train": {"lr": 1e-4, "new_flag": None}}
    assert config_differences(saved, now) == []
    assert config_differences(saved, {**now, "allow_partial": True}) == [
        "allow_partial: run has None, now True"
    ]
