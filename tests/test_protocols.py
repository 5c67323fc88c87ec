"""Named protocols: the published recipes setting by setting, deviations recorded, and the
fidelity defects they exposed (each test fails on the code before protocols existed)."""

from __future__ import annotations

import pytest
import torch

from fmeval.config import RunConfig
from fmeval.errors import ConfigError
from fmeval.protocols import ProtocolError, apply_protocol, load_protocol, protocol_names
from fmeval.runner import make_config
from helpers import only_report, run, show_protocol

SHIPPED = ("medmnist-v2", "medmnist-plus", "resolution-study", "medclip-zeroshot", "clip-zeroshot")


def test_protocols_ls_and_show_every_setting_with_its_source(capsys):
    assert set(SHIPPED) <= set(protocol_names())
    code, out, _ = run(capsys, "protocols", "ls")
    assert code == 0 and all(n in out for n in SHIPPED)
    _, out, _ = show_protocol(capsys, "medmnist-plus", "finetune")
    assert "9930641" in out and "silent" in out


def test_every_protocol_setting_is_a_real_config_field():
    for name in SHIPPED:
        p = load_protocol(name)
        for mode in p.spec.modes:
            mode = {"finetune": "finetune-full"}.get(mode, mode)
            model = p.spec.models.value[0] if p.spec.models else "resnet18"  # a listed model conforms
            cfg = apply_protocol(p, RunConfig(mode=mode, model=model, dataset="pneumoniamnist"), {})
            for key, setting in p.settings_for(mode).items():
                got = cfg.get(key)
                want = setting.value
                assert (list(got) if isinstance(got, tuple) else got) == want, (name, key)
            assert cfg.protocol == name and cfg.deviations == () and cfg.seed == p.seeds[0]


def test_explicit_options_override_and_are_recorded_as_deviations():
    cfg = make_config("finetune-full", {"protocol": "medmnist-plus", "model": "resnet18",
                                        "dataset": "pneumoniamnist", "train.epochs": 10, "train.lr": 1e-4,
                                        "seed": 115149041})
    assert cfg.train.epochs == 10 and cfg.train.optimizer == "adamw"
    assert cfg.deviations == ("train.epochs=10",)  # same lr and a protocol seed are no deviation
    cfg = make_config("knn", {"protocol": "medmnist-plus", "model": "resnet18", "dataset": "pneumoniamnist",
                              "seed": 3, "knn.ks": (5, 11)})
    assert set(cfg.deviations) == {"seed=3", "knn.ks=5,11"}
    with pytest.raises(ProtocolError, match="does not define mode 'knn'"):
        make_config("knn", {"protocol": "medmnist-v2", "model": "resnet18", "dataset": "pneumoniamnist"})
    with pytest.raises(ConfigError, match="unknown protocol 'medmnist-v3'"):
        make_config("knn", {"protocol": "medmnist-v3", "model": "resnet18", "dataset": "pneumoniamnist"})


def test_medmnist_v2_lr_drops_at_epochs_50_and_75():
    from fmeval.training.optim import ScheduleSpec, build_optimizer, build_scheduler

    cfg = make_config("finetune-full", {"protocol": "medmnist-v2", "model": "resnet18-medmnist",
                                        "dataset": "pneumoniamnist"}).train
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.milestones, cfg.epochs) == ("adam", 1e-3, "multistep",
                                                                                  (50, 75), 100)
    steps = 37  # optimiser steps per epoch (4708 / 128)
    w = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([{"params": [w], "lr_scale": 1.0, "weight_decay": 0.0}], cfg.lr, cfg.optimizer)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    sched = build_scheduler(opt, ScheduleSpec(0, steps, cfg.epochs, cfg.milestones, cfg.gamma), cfg.schedule)
    lr_at = {}
    for step in range(76 * steps):
        epoch = step // steps
        if step % steps == 0:
            lr_at[epoch] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    assert lr_at[49] == pytest.approx(1e-3) and lr_at[50] == pytest.approx(1e-4)
    assert lr_at[74] == pytest.approx(1e-4) and lr_at[75] == pytest.approx(1e-5)


def test_medmnist_plus_cosine_follows_timm_stepped_per_epoch():
    """timm CosineLRScheduler(t_initial=100, t_in_epochs=True) stepped with step(epoch=e) after epoch e."""
    import math

    from fmeval.training.optim import cosine_epoch_factor

    cfg = make_config("finetune-full", {"protocol": "medmnist-plus", "model": "resnet18",
                                        "dataset": "pneumoniamnist"}).train
    assert cfg.schedule == "cosine-epoch" and cfg.decay_scope == "all" and cfg.select_metric == "loss"
    expect = [1.0, 1.0] + [0.5 * (1 + math.cos(math.pi * (e - 1) / 100)) for e in range(2, 100)]
    assert [cosine_epoch_factor(e, 100) for e in range(100)] == pytest.approx(expect)


def test_organ_datasets_are_never_flipped_and_shifts_do_not_wrap():
    from fmeval.data.augment import augment_batch, augment_policy

    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6) + 1.0
    for flag in ("organamnist", "organcmnist", "organsmnist"):
        pol = augment_policy(flag)
        assert not pol.hflip
        pol0 = type(pol)(hflip=False, max_shift=0)
        for seed in range(50):
            assert torch.equal(augment_batch(x, pol0, torch.Generator().manual_seed(seed)), x)
    pneu = augment_policy("pneumoniamnist")
    assert pneu.hflip
    flips = sum(torch.equal(augment_batch(x, type(pneu)(True, 0), torch.Generator().manual_seed(s))[0],
                            x[0].flip(-1)) for s in range(40))
    assert 5 < flips < 35
    # a shifted image never contains pixels wrapped in from the opposite edge: the new border is 0
    for s in range(30):
        y = augment_batch(x, type(pneu)(False, 2), torch.Generator().manual_seed(s))
        for i in range(2):
            vals = set(y[i].unique().tolist()) - {0.0}
            assert vals <= set(x[i].unique().tolist())
            zero_rows = (y[i] == 0).all(dim=(0, 2))
            zero_cols = (y[i] == 0).all(dim=(0, 1))
            shifted = int(zero_rows.sum()) + int(zero_cols.sum())
            assert (y[i] != 0).sum() == 3 * (6 - int(zero_rows.sum())) * (6 - int(zero_cols.sum()))
            assert shifted <= 4


def test_resnet_medmnist_at_224_is_an_error_without_the_protocol(capsys, pneumonia_root, tmp_path):
    """Before: 224 px images were silently shrunk to 28 px."""
    from fmeval.data.synthetic import write_synthetic

    write_synthetic(tmp_path, "pneumoniamnist", 224, n=(8, 4, 4))
    code, _, err = run(capsys, "finetune", "--full", "--model", "resnet18-medmnist", "--tiny", "--dataset",
                       "pneumoniamnist", "--size", "224", "--data-root", str(tmp_path))
    assert code == 2 and "takes 28 px input" in err and "Traceback" not in err
    cfg = make_config("finetune-full", {"protocol": "medmnist-v2", "model": "resnet18-medmnist",
                                        "dataset": "pneumoniamnist", "size": 224})
    assert (cfg.size, cfg.input_size, cfg.interpolation, cfg.protocol_variant) == (28, 224, "nearest", "224")
    from fmeval.pipeline import build_adapter

    a = build_adapter(cfg.with_values({"tiny": True}), torch.device("cpu"))
    assert isinstance(a.model.maxpool, torch.nn.MaxPool2d) and a.model.conv1.kernel_size == (7, 7)
    a28 = build_adapter(make_config("finetune-full", {"protocol": "medmnist-v2", "model": "resnet18-medmnist",
                                                      "dataset": "pneumoniamnist", "tiny": True}),
                        torch.device("cpu"))
    assert a28.model.conv1.kernel_size == (3, 3) and isinstance(a28.model.maxpool, torch.nn.Identity)


def test_dinov2_defaults_to_224_and_input_size_is_keyed_and_reported(tmp_path):
    from fmeval.adapters import create_adapter

    a = create_adapter("dinov2-vits14", pretrained=False)
    assert a.preprocess.input_size == 224  # not timm's 518
    from fmeval.data.synthetic import write_synthetic
    from fmeval.runner import execute

    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(20, 10, 10))
    base = {"model": "vit-s16", "dataset": "pneumoniamnist", "data_root": str(tmp_path), "tiny": True,
            "n_boot": 0, "reports_dir": str(tmp_path / "r")}
    r32 = execute(make_config("knn", {**base, "knn.ks": (3,)}))
    r48 = execute(make_config("knn", {**base, "knn.ks": (3,), "input_size": 48}))
    assert r32.transform["input_size"] == 32 and r48.transform["input_size"] == 48
    assert not any(r48.extras["cache_hits"].values())  # another input size never reuses features
    from fmeval.report import leaderboard

    rows = leaderboard(tmp_path / "r", include_all=True).rows
    assert sorted(row["input_size"] for row in rows) == [32, 48]


def test_precision_is_part_of_the_cache_key(tmp_path):
    from fmeval.data.synthetic import write_synthetic
    from fmeval.pipeline import prepare_frozen

    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(20, 10, 10))
    base = {"model": "resnet18", "dataset": "pneumoniamnist", "data_root": str(tmp_path), "tiny": True}
    fp32 = prepare_frozen(make_config("knn", {**base, "precision": "fp32"}))
    bf16 = prepare_frozen(make_config("knn", {**base, "precision": "bf16"}))
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert not any(bf16.cache_hits.values())
    assert all(prepare_frozen(make_config("knn", {**base, "precision": "fp32"})).cache_hits.values())


def test_leaderboard_never_ranks_incomparable_runs_together(tmp_path):
    from fmeval.data.synthetic import write_synthetic
    from fmeval.report import leaderboard
    from fmeval.runner import execute

    write_synthetic(tmp_path, "pneumoniamnist", 28, n=(30, 10, 10))
    write_synthetic(tmp_path, "breastmnist", 28, n=(30, 10, 10))
    base = {"data_root": str(tmp_path), "n_boot": 0, "reports_dir": str(tmp_path / "r"), "knn.ks": (3,)}
    for ds in ("pneumoniamnist", "breastmnist"):
        execute(make_config("knn", {**base, "model": "resnet18", "dataset": ds, "tiny": True}))
    execute(make_config("knn", {**base, "model": "resnet18", "dataset": "pneumoniamnist", "pretrained": False}))
    execute(make_config("knn", {**base, "model": "resnet18", "dataset": "pneumoniamnist", "pretrained": False,
                                "limit": 8}))
    board = leaderboard(tmp_path / "r")
    assert [(row["dataset"], row["weights"]) for row in board.rows] == [("pneumoniamnist", "random")]
    assert len(board.excluded) == 3  # tiny and --limit runs stay out of the ranking
    full = leaderboard(tmp_path / "r", include_all=True)
    assert set(full.groups()) == {("breastmnist", 28), ("pneumoniamnist", 28)}
    md = full.to_markdown()
    assert "## breastmnist @ 28 px" in md and "## pneumoniamnist @ 28 px" in md
    for col in ("protocol", "input", "weights", "precision"):
        assert col in md


@pytest.mark.slow
@pytest.mark.parametrize("name,argv,expect", [
    ("medmnist-v2", ["finetune", "--full", "--model", "resnet18-medmnist", "--epochs", "1",
                     "--max-steps-per-epoch", "4"],
     {"transform.norm": "half", "transform.input_size": 28, "transform.interpolation": "nearest",
      "config.train.optimizer": "adam", "config.train.schedule": "multistep", "config.train.milestones": [50, 75],
      "config.train.select_metric": "auc", "config.train.batch_size": 128, "precision": "fp32"}),
    ("medmnist-plus", ["finetune", "--full", "--model", "resnet18", "--epochs", "1", "--max-steps-per-epoch", "2"],
     {"transform.geometry": "pad", "transform.canvas": 224, "transform.input_size": 224,
      "transform.pad_fill": "mean", "transform.norm": "model", "config.train.optimizer": "adamw",
      "config.train.schedule": "cosine-epoch", "config.train.select_metric": "loss", "config.train.patience": 5}),
    ("medmnist-plus", ["knn", "--model", "resnet18"],
     {"transform.geometry": "pad", "transform.canvas": 224, "config.knn.ks": [11],
      "config.knn.rule": "euclidean-majority", "seed": 9930641}),
    ("resolution-study", ["finetune", "--full", "--model", "tv-resnet18", "--epochs", "1",
                          "--max-steps-per-epoch", "2", "--size", "28"],  # 28 px: a recorded deviation
     {"transform.norm": "half", "transform.input_size": 224, "transform.geometry": "resize",
      "config.train.optimizer": "adam", "config.train.milestones": [50, 75], "config.train.patience": 0}),
    ("medclip-zeroshot", ["zeroshot", "--model", "medclip", "--prompts", "pneumonia"],
     {"transform.geometry": "pad", "transform.pad_fill": "zero", "transform.canvas": 224,
      "transform.grayscale": True, "config.zeroshot.ensemble": "mean-logit"}),
    ("clip-zeroshot", ["zeroshot", "--model", "clip-vit-b32", "--prompts", "pneumonia"],
     {"transform.geometry": "resize", "config.zeroshot.ensemble": "mean-embedding"}),
])
def test_each_protocol_end_to_end_records_its_settings(capsys, pneumonia_root, tmp_path, name, argv, expect):
    reports = tmp_path / "r"
    code, out, err = run(capsys, *argv, "--protocol", name, "--tiny", "--dataset", "pneumoniamnist",
                         "--data-root", str(pneumonia_root), "--limit", "96", "--bootstrap", "20",
                         "--reports-dir", str(reports))
    assert code == 0, err
    res = only_report(reports)
    p = res["protocol"]
    assert p["name"] == name and p["version"] == load_protocol(name).version
    assert p["sha256"] == load_protocol(name).sha256
    assert "limit=96" in p["deviations"]
    if "--epochs" in argv:
        assert "train.epochs=1" in p["deviations"]  # the epoch budget is a listed deviation
    for path, want in expect.items():
        node = res
        for part in path.split("."):
            node = node[part]
        assert node == want, path
    assert "deviating in" in (reports / res["run_id"] / "report.md").read_text()
    assert f"{name}*" in out or "protocol:" in out
