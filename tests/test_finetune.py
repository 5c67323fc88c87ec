"""Fine-tuning: LoRA and full fine-tuning on real PneumoniaMNIST, reload, resume.

Tiny random-init encoders at 28 px on CPU. Torch runs single-threaded here:
on a shared 2-core machine, 2 intra-op threads were ~10x slower than one.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fmeval.errors import ConfigError
from fmeval.config import RunConfig
from fmeval.modes.finetune import (
    STOP_ENV,
    TrainingInterrupted,
    evaluate_adapter,
    load_finetuned,
    run_finetune,
)
from fmeval.runner import execute
from fmeval.training import LoraSettings, TrainConfig
from fmeval.training.checkpoint import RUN_FILE, STATE_FILE
from fmeval.training.losses import task_rule
from fmeval.training.optim import WarmupCosine, param_groups

MAJORITY = 390 / 624  # PneumoniaMNIST test majority rate


@pytest.fixture(scope="module", autouse=True)
def _single_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("FMEVAL_PROGRESS", "0")
    yield
    mp.undo()
    torch.set_num_threads(n)


def _cfg(root: Path, model: str, method: str, tmp: Path, **train) -> RunConfig:
    return RunConfig(
        mode=f"finetune-{method}", model=model, dataset="pneumoniamnist", data_root=str(root), tiny=True,
        pretrained=False, n_boot=200, seed=0, reports_dir=str(tmp / "reports"),
        train=TrainConfig(**train),
    )


def _metrics(result) -> dict:
    return result.test.to_dict()["metrics"]


@pytest.fixture(scope="module")
def lora_run(pneumonia_root, tmp_path_factory):
    """LoRA on a tiny ViT, full train split (4708), 4 epochs; scored on all 624 test images."""
    tmp = tmp_path_factory.mktemp("lora")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMEVAL_ADAPTERS_DIR", str(tmp / "adapters"))
        cfg = _cfg(pneumonia_root, "vit-b16", "lora", tmp, epochs=4, lr=3e-3, patience=0)
        result = execute(cfg)
    return cfg, result


def test_lora_vit_beats_majority_baseline(lora_run):
    _, r = lora_run
    m = {k: v.value for k, v in r.test.metrics.items()}
    assert r.test.n == 624
    # measured: acc 0.83, auc 0.93, balanced acc 0.79 (majority: 0.625 / 0.5 / 0.5)
    assert m["auc"] > 0.88
    assert m["balanced_acc"] > 0.70
    assert m["acc"] > MAJORITY + 0.1
    ex = r.extras
    assert ex["curves"]["epoch"] == [1, 2, 3, 4]
    assert set(ex["curves"]) == {"epoch", "train_loss", "val_loss", "val_auc", "lr"}
    assert ex["curves"]["train_loss"][-1] < ex["curves"]["train_loss"][0]
    assert 1 <= ex["training"]["best_epoch"] <= 4 and r.selection["best_epoch"] == ex["training"]["best_epoch"]
    assert ex["training"]["time_per_epoch_s"] > 0 and ex["training"]["peak_memory"]["peak_rss_mb"] > 0
    assert Path(r.report_dir, "results.json").exists()


def test_lora_only_lora_and_head_trainable(lora_run, pneumonia_root):
    cfg, r = lora_run
    from fmeval.modes.finetune import prepare

    p = prepare(cfg)
    names = [n for n, q in p.model.named_parameters() if q.requires_grad]
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    lora_n = sum(q.numel() for n, q in p.model.named_parameters() if "lora_" in n)
    head_n = sum(q.numel() for q in p.model.head.parameters())
    params = r.extras["training"]["params"]
    assert params["trainable"] == lora_n + head_n
    assert params["trainable"] < params["total"] / 5


def test_lora_adapter_saved_in_peft_format_and_reloads_exactly(lora_run, tmp_path):
    cfg, r = lora_run
    folder = Path(r.extras["training"]["adapter_path"])
    for f in ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", RUN_FILE):
        assert (folder / f).exists(), f
    rec = json.loads((folder / RUN_FILE).read_text())
    assert rec["status"] == "done" and rec["config"]["model"] == "vit-b16"
    assert rec["config"]["tiny"] is True and rec["dataset"]["flag"] == "pneumoniamnist"
    assert rec["transform"]["input_size"] == 32 and rec["transform"]["geometry"] == "resize"
    peft_cfg = json.loads((folder / "adapter_config.json").read_text())
    assert peft_cfg["peft_type"] == "LORA" and peft_cfg["r"] == 8

    again = evaluate_adapter(folder, reports_dir=str(tmp_path / "reports"))
    assert again.extras["reproduces_training_scores"] is True
    assert _metrics(again) == _metrics(r)  # values and bootstrap CIs, bit for bit
    assert again.val.to_dict()["metrics"] == r.val.to_dict()["metrics"]


def test_cli_evaluate_writes_the_same_metrics(lora_run, tmp_path):
    from fmeval.cli import main

    _, r = lora_run
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--adapter", r.extras["training"]["adapter_path"], "--reports-dir", str(tmp_path)])
    assert exc.value.code == 0
    (results,) = tmp_path.glob("*/results.json")
    assert json.loads(results.read_text())["test"]["metrics"] == _metrics(r)


def test_reloaded_adapter_runs_in_the_precision_it_trained_in(lora_run):
    """evaluate/predict default to the run's resolved precision (an ``auto`` run trained
    in bf16 on a GPU stays bf16 elsewhere); ``--precision`` overrides it."""
    _, r = lora_run
    folder = Path(r.extras["training"]["adapter_path"])
    rec = json.loads((folder / RUN_FILE).read_text())
    assert rec["precision"] in ("fp32", "bf16") and rec["config"]["precision"] == "auto"
    cfg, p = load_finetuned(folder)
    assert cfg.precision == rec["precision"] and p.setup.precision == rec["precision"]
    cfg, p = load_finetuned(folder, precision="bf16")
    assert p.setup.precision == "bf16"


def test_full_finetune_resnet_beats_majority_baseline(pneumonia_root, tmp_path):
    # 3 epochs x 20 minibatches of 64 (quick-look cap), full val/test splits
    cfg = _cfg(pneumonia_root, "resnet18", "full", tmp_path, epochs=3, lr=1e-3, patience=0,
               max_steps_per_epoch=20)
    r = run_finetune(cfg)
    m = {k: v.value for k, v in r.test.metrics.items()}
    # measured: acc 0.81, auc 0.91, balanced acc 0.76
    assert r.test.n == 624
    assert m["auc"] > 0.85
    assert m["balanced_acc"] > 0.65
    assert m["acc"] > MAJORITY + 0.08
    p = r.extras["training"]["params"]
    assert p["trainable"] == p["total"] > 4_000_000
    assert r.extras["training"]["steps_per_epoch"] == 20
    folder = Path(r.extras["training"]["adapter_path"])
    assert (folder / "model.safetensors").exists() and (folder / "head.safetensors").exists()
    # full runs reload too (BatchNorm statistics included)
    _, prep = load_finetuned(folder)
    assert all(not q.requires_grad for q in prep.model.parameters())
    again = evaluate_adapter(folder)
    assert again.extras["reproduces_training_scores"] is True
    assert _metrics(again) == _metrics(r)


def _small(root: Path, tmp: Path) -> RunConfig:
    cfg = _cfg(root, "vit-b16", "lora", tmp, epochs=3, lr=3e-3, patience=0,
               max_steps_per_epoch=6)
    return replace(cfg, limit=200, n_boot=50)


def test_interrupted_run_resumes_to_the_same_result(pneumonia_root, tmp_path, monkeypatch):
    cfg = _small(pneumonia_root, tmp_path)
    straight = run_finetune(cfg)

    monkeypatch.setenv(STOP_ENV, "1")
    with pytest.raises(TrainingInterrupted) as exc:
        run_finetune(cfg)
    run_dir = exc.value.run_dir
    assert (run_dir / STATE_FILE).exists()
    assert json.loads((run_dir / RUN_FILE).read_text())["status"] == "training"
    with pytest.raises(ConfigError, match="unfinished"):
        evaluate_adapter(run_dir)
    monkeypatch.delenv(STOP_ENV)

    resumed = run_finetune(replace(cfg, resume=str(run_dir)))
    assert resumed.extras["training"]["resumed_at_epoch"] == 1
    assert resumed.extras["curves"] == straight.extras["curves"]
    assert _metrics(resumed) == _metrics(straight)


def test_resume_rejects_missing_or_mismatched_runs(pneumonia_root, tmp_path, monkeypatch):
    cfg = _small(pneumonia_root, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        run_finetune(replace(cfg, resume=str(tmp_path / "nope")))
    monkeypatch.setenv(STOP_ENV, "1")
    with pytest.raises(TrainingInterrupted) as exc:
        run_finetune(cfg)
    other = replace(cfg, resume=str(exc.value.run_dir), train=replace(cfg.train, lr=1e-2))
    with pytest.raises(ConfigError, match="train.lr"):
        run_finetune(other)


def test_cli_requires_exactly_one_method(pneumonia_root, capsys):
    from fmeval.cli import main

    base = ["finetune", "-m", "vit-b16", "-d", "pneumoniamnist", "--tiny",
            "--data-root", str(pneumonia_root)]
    for extra in ([], ["--lora", "--full"]):
        with pytest.raises(SystemExit) as exc:
            main(base + extra)
        assert exc.value.code == 2
        assert "exactly one of --lora / --full" in capsys.readouterr().err


def test_cli_help_documents_defaults(capsys):
    from fmeval.cli import main

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    for word in ("--lora", "--full", "--resume", "--layer-decay", "--pos-weight", "1e-4", "patience"):
        assert word in out


def test_model_without_lora_targets_is_a_clear_error():
    from fmeval.adapters import create_adapter
    from fmeval.training.lora import apply_lora

    adapter = create_adapter("vit-b16", tiny=True)
    adapter.lora_targets = ()  # type: ignore[misc]
    with pytest.raises(ConfigError, match="no LoRA target"):
        apply_lora(adapter, LoraSettings())
    adapter.lora_targets = ("no_such_layer",)  # type: ignore[misc]
    with pytest.raises(ConfigError):
        apply_lora(adapter, LoraSettings())


def test_layer_decay_scales_vit_blocks_and_rejects_flat_backbones():
    from fmeval.adapters import create_adapter

    adapter = create_adapter("vit-b16", tiny=True)  # depth 2
    head = torch.nn.Linear(adapter.feature_dim, 2)
    groups = param_groups(adapter.backbone, head, weight_decay=0.05, layer_decay=0.5)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(adapter.backbone.named_parameters())
    s0 = scale[id(named["blocks.0.attn.qkv.weight"])]
    s1 = scale[id(named["blocks.1.attn.qkv.weight"])]
    assert scale[id(named["patch_embed.proj.weight"])] < s0 < s1 < scale[id(head.weight)] == 1.0
    assert math.isclose(s0 / s1, 0.5)
    wd = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert wd[id(named["blocks.0.norm1.weight"])] == 0.0 and wd[id(head.weight)] == 0.05
    flat = torch.nn.Sequential()
    flat.add_module("a", torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="layer-decay"):
        param_groups(flat, head, weight_decay=0.0, layer_decay=0.75)


def test_warmup_cosine_schedule():
    f = WarmupCosine(warmup_steps=4, total_steps=20)
    ups = [f(s) for s in range(4)]
    assert ups == sorted(ups) and ups[-1] < 1.0
    assert f(4) == pytest.approx(1.0) and f(20) == pytest.approx(0.0)
    assert f(12) == pytest.approx(0.5)


def test_losses_by_task_and_class_weights():
    ml = task_rule("multi-label, binary-class")
    labels = np.array([[1, 0], [0, 0], [0, 0], [1, 1]])
    loss = ml.loss_fn(labels, 2, class_weights="balanced", pos_weight=None, device=torch.device("cpu"))
    z = torch.zeros(4, 2)
    y = ml.targets(labels)
    # balanced pos_weight = negatives/positives per label = [1, 3]
    expect = torch.nn.functional.binary_cross_entropy_with_logits(z, y, pos_weight=torch.tensor([1.0, 3.0]))
    assert torch.allclose(loss(z, y), expect)
    assert ml.scores(z).shape == (4, 2)
    ce = task_rule("binary-class")
    lab = np.array([[0], [1], [1], [1]])
    loss = ce.loss_fn(lab, 2, class_weights=None, pos_weight=10.0, device=torch.device("cpu"))
    zz = torch.randn(4, 2)
    ref = torch.nn.functional.cross_entropy(zz, ce.targets(lab), weight=torch.tensor([1.0, 10.0]))
    assert torch.allclose(loss(zz, ce.targets(lab)), ref)
    assert torch.allclose(ce.scores(zz).sum(1), torch.ones(4))


def test_adapter_folder_and_report_share_the_run_id(pneumonia_root, tmp_path):
    cfg = _cfg(pneumonia_root, "vit-b16", "lora", tmp_path, epochs=1, max_steps_per_epoch=2)
    cfg = replace(cfg, limit=64)
    res = execute(cfg)
    assert Path(res.extras["training"]["adapter_path"]).name == res.run_id
    assert (tmp_path / "reports" / res.run_id / "results.json").exists()
