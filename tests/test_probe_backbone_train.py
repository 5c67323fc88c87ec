"""Issue 22 item 2: the MedMNIST+ linear probe of the BatchNorm/dropout CNNs runs the frozen backbone in
train() mode while the head trains (as the reference's train.py), so BatchNorm running statistics adapt to
the dataset and nothing is cached; the ViTs keep the cached eval-mode probe (train() changes nothing there).
"""

from __future__ import annotations

import pytest
import torch

from fmeval.errors import ConfigError
from fmeval.runner import make_config
from helpers import only_report, run

PLUS = {"protocol": "medmnist-plus", "dataset": "pneumoniamnist"}


@pytest.mark.parametrize("model,expected", [
    ("resnet18", "train"), ("tv-alexnet", "train"), ("efficientnet-b4", "train"), ("vgg16", "train"),
    ("densenet121-ra", "train"), ("vit-b16", "eval"), ("dino-vitb16", "eval"),
])
def test_medmnist_plus_probes_bn_dropout_cnns_through_a_train_mode_backbone(model, expected):
    cfg = make_config("linprobe", {**PLUS, "model": model})
    assert cfg.linprobe.backbone == expected
    assert cfg.deviations == ()  # the protocol's own recipe, not a deviation
    assert make_config("linprobe", {"model": model, "dataset": "pneumoniamnist"}).linprobe.backbone == "eval"


def test_eval_backbone_under_the_protocol_is_a_deviation_and_train_needs_raw_features():
    cfg = make_config("linprobe", {**PLUS, "model": "resnet18", "linprobe.backbone": "eval"})
    assert any(d.startswith("linprobe.backbone=eval") for d in cfg.deviations), cfg.deviations
    # outside the protocol the default hash is unchanged (an eval probe does not hash the field)
    plain = make_config("linprobe", {"model": "resnet18", "dataset": "pneumoniamnist"})
    assert "backbone" not in plain.semantic_dict(("linprobe",))["linprobe"]
    assert make_config("linprobe", {"model": "resnet18", "dataset": "pneumoniamnist", "linprobe.backbone": "train",
                                    "linprobe.feature_norm": "none"}).digest(("linprobe",)) != plain.digest(("linprobe",))
    from fmeval.modes.linprobe_train import run_trainmode_probe

    with pytest.raises(ConfigError, match="--feature-norm none"):
        run_trainmode_probe(make_config("linprobe", {"model": "resnet18", "dataset": "pneumoniamnist",
                                                     "linprobe.backbone": "train"}))


def _tiny_cfg(root, **extra):
    return make_config("linprobe", {
        "model": "resnet18", "tiny": True, "dataset": "pneumoniamnist", "data_root": str(root), "limit": 48,
        "geometry": "resize", "input_size": 32, "probe.lrs": (1e-3,), "probe.weight_decays": (0.01,),
        "probe.epochs": 2, "probe.batch_size": 16, "linprobe.backbone": "train", "linprobe.feature_norm": "none",
        "n_boot": 0, "use_cache": False, **extra})


def _spy_batchnorm(monkeypatch):
    """Record, for every forward of the adapter's BatchNorm layers, whether it ran in training mode,
    and keep the adapter so the test can read its running statistics after the run."""
    from fmeval import pipeline

    seen = {"train": 0, "eval": 0, "adapter": None, "start": None}
    original = pipeline.prepare

    def spied(*a, **kw):
        p = original(*a, **kw)
        seen["adapter"] = p.adapter
        bns = [m for m in p.adapter.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        assert bns, "the tiny ResNet-18 has BatchNorm layers"
        seen["start"] = bns[0].running_mean.clone()
        for m in bns[:1]:
            m.register_forward_pre_hook(lambda mod, _x: seen.__setitem__(
                "train" if mod.training else "eval", seen["train" if mod.training else "eval"] + 1))
        return p

    monkeypatch.setattr(pipeline, "prepare", spied)
    return seen


def test_train_mode_probe_normalises_training_batches_with_batch_statistics(monkeypatch, pneumonia_root):
    from fmeval.modes.linprobe_train import run_trainmode_probe

    seen = _spy_batchnorm(monkeypatch)
    res = run_trainmode_probe(_tiny_cfg(pneumonia_root))
    adapter = seen["adapter"]
    # 48 training images at batch 16 = 3 train-mode batches per epoch, 2 epochs; validation and test
    # (48 each, eval batch 256) in eval mode: 2 validations + val + test scoring = 4 eval batches
    assert seen["train"] == 6 and seen["eval"] == 4, seen
    bn = next(m for m in adapter.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert not torch.equal(bn.running_mean, seen["start"])  # running statistics adapted to the data
    assert all(not p.requires_grad for p in adapter.parameters())
    assert res.extras["probe_backbone"]["mode"] == "train" and not res.extras["probe_backbone"]["cached_features"]
    assert "cache_hits" not in res.extras  # nothing was read from or written to the feature cache
    assert res.selection["lr"] == 1e-3 and res.selection["best_epoch"] in (1, 2)


def test_train_mode_differs_from_the_same_loop_with_an_eval_backbone(monkeypatch, pneumonia_root):
    """The control: the same loop with the backbone in eval() never runs BatchNorm in training mode and
    leaves the running statistics alone, and the two probes' test scores differ."""
    from fmeval.modes.linprobe_train import run_trainmode_probe

    seen = _spy_batchnorm(monkeypatch)
    control = run_trainmode_probe(_tiny_cfg(pneumonia_root), backbone_train=False)
    bn = next(m for m in seen["adapter"].modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    assert seen["train"] == 0 and torch.equal(bn.running_mean, seen["start"])
    trained = run_trainmode_probe(_tiny_cfg(pneumonia_root))
    assert not torch.allclose(torch.as_tensor(trained.test_scores), torch.as_tensor(control.test_scores))


@pytest.mark.slow
def test_cli_medmnist_plus_resnet18_probe_runs_in_train_mode(capsys, tmp_path, pneumonia_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "linprobe", "--protocol", "medmnist-plus", "--model", "resnet18", "--tiny",
                         "--dataset", "pneumoniamnist", "--data-root", str(pneumonia_root), "--limit", "24",
                         "--canvas", "32", "--epochs", "2", "--bootstrap", "10", "--reports-dir", str(tmp_path / "r"))
    assert code == 0, err
    res = only_report(tmp_path / "r")
    assert res["config"]["linprobe"]["backbone"] == "train"
    assert res["extras"]["probe_backbone"]["mode"] == "train"
    assert not any("backbone" in d for d in res["protocol"]["deviations"])
    assert not list((tmp_path / "r").glob("**/features*"))
