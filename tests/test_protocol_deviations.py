"""Issue 22 items 5 and 6: every option that moves numbers and differs from a protocol's recipe is a
recorded deviation (not only the settings the protocol names), and an off-protocol size is recorded
with a warning instead of being resampled silently. Each test failed on the code before the fix."""

from __future__ import annotations

import csv

import pytest

from fmeval.protocols import ProtocolError, load_protocol
from fmeval.runner import make_config
from helpers import only_report, run

V2 = {"protocol": "medmnist-v2", "model": "resnet18-medmnist", "dataset": "pneumoniamnist"}
PLUS = {"protocol": "medmnist-plus", "model": "resnet18", "dataset": "pneumoniamnist"}


def test_model_outside_the_protocols_list_is_a_deviation():
    cfg = make_config("finetune-full", {**V2, "model": "vit-s16"})
    assert cfg.deviations == ("model=vit-s16 (outside the protocol's models)",)
    assert make_config("finetune-full", V2).deviations == ()  # a listed model conforms


def test_dataset_outside_the_protocols_list_is_a_deviation():
    cfg = make_config("finetune-full", {"protocol": "resolution-study", "model": "tv-resnet18",
                                        "dataset": "organamnist", "size": 224})
    assert cfg.deviations == ("dataset=organamnist (outside the protocol's datasets)",)


@pytest.mark.parametrize("path,value", [
    ("train.sampler", "balanced"), ("train.layer_decay", 0.75), ("train.max_steps_per_epoch", 4),
    ("train.pos_weight", 2.0), ("pretrained", False), ("weights_seed", 3), ("interpolation", "bicubic"),
])
def test_settings_the_protocol_leaves_at_the_default_are_deviations_when_changed(path, value):
    cfg = make_config("finetune-full", {**PLUS, path: value})
    assert cfg.get(path) == value
    assert cfg.deviations == (f"{path}={value}",)


def test_tiny_random_weights_are_deviations():
    cfg = make_config("knn", {**PLUS, "tiny": True})
    assert set(cfg.deviations) == {"tiny=True", "pretrained=False"}


def test_user_defaults_that_move_numbers_are_deviations_too():
    cfg = make_config("finetune-full", PLUS, user={"train.sampler": "balanced", "batch_size": 32})
    assert cfg.deviations == ("train.sampler=balanced",)  # the extraction batch moves nothing


def test_lora_under_a_full_finetuning_recipe_is_a_deviation_not_a_silent_conformance():
    cfg = make_config("finetune-lora", PLUS)
    assert cfg.deviations == ("mode=finetune-lora (the protocol's finetune is finetune-full)",)
    assert make_config("finetune-full", PLUS).deviations == ()
    cfg = make_config("finetune-lora", V2)  # medmnist-v2 defines full training only
    assert cfg.deviations[0].startswith("mode=finetune-lora")
    with pytest.raises(ProtocolError, match="does not define mode 'knn'"):
        make_config("knn", V2)


@pytest.mark.parametrize("protocol,model,size,input_size", [
    ("medmnist-v2", "resnet18-medmnist", 64, 28), ("medmnist-v2", "resnet18-medmnist", 128, 28),
    ("resolution-study", "tv-resnet18", 28, 224),
])
def test_off_protocol_sizes_are_recorded_and_warned(capsys, protocol, model, size, input_size):
    from fmeval.protocols import deviations

    deviations._WARNED.clear()
    cfg = make_config("finetune-full", {"protocol": protocol, "model": model, "dataset": "pneumoniamnist",
                                        "size": size})
    assert cfg.size == size and cfg.input_size == input_size
    assert f"size={size} (outside the protocol's sizes)" in cfg.deviations
    err = capsys.readouterr().err
    assert "warning:" in err and f"{size} px images are resampled to the {input_size} px input" in " ".join(
        err.split())
    for ok in load_protocol(protocol).spec.sizes.value:  # the protocol's own sizes: no deviation
        dev = make_config("finetune-full", {"protocol": protocol, "model": model, "dataset": "pneumoniamnist",
                                            "size": ok}).deviations
        assert not any(d.startswith("size=") for d in dev)


def test_study_cells_of_the_shipped_grid_stay_conforming():
    cfg = make_config("linprobe", {"protocol": "medmnist-plus", "model": "sam-vitb", "dataset": "organsmnist",
                                   "size": 64, "seed": 252139603})
    assert cfg.deviations == ()


@pytest.mark.slow
def test_cli_medmnist_v2_with_vit_lists_the_model_as_a_deviation_in_report_and_leaderboard(
        capsys, tmp_path, pneumonia_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reports = tmp_path / "r"
    code, out, err = run(capsys, "finetune", "--full", "--protocol", "medmnist-v2", "--model", "vit-s16",
                         "--tiny", "--dataset", "pneumoniamnist", "--data-root", str(pneumonia_root),
                         "--limit", "32", "--epochs", "1", "--max-steps-per-epoch", "1", "--bootstrap", "10",
                         "--reports-dir", str(reports))
    assert code == 0, err
    res = only_report(reports)
    devs = res["protocol"]["deviations"]
    assert "model=vit-s16 (outside the protocol's models)" in devs
    assert {"tiny=True", "train.max_steps_per_epoch=1"} <= set(devs)  # from scratch is the recipe
    assert "pretrained=False" not in devs
    assert "model=vit-s16" in (reports / res["run_id"] / "report.md").read_text()
    code, out, err = run(capsys, "report", "--reports-dir", str(reports), "--all")
    assert code == 0, err
    rows = list(csv.DictReader((reports / "leaderboard.csv").open()))
    assert len(rows) == 1 and "model=vit-s16 (outside the protocol's models)" in rows[0]["deviations"]
    assert rows[0]["protocol"] == "medmnist-v2*"
    md = (reports / "leaderboard.md").read_text()
    assert "model=vit-s16" in md
    assert "| geometry |" in md and rows[0]["geometry"] in md  # issue 22 item 11: the geometry column
    assert f"| {float(rows[0]['auc']):.4f} [" in md  # and 4 decimals, as the study tables


def test_without_a_size_the_protocols_own_size_is_used_not_a_resampled_28():
    cfg = make_config("finetune-full", {"protocol": "resolution-study", "model": "tv-resnet18",
                                        "dataset": "pneumoniamnist"})
    assert cfg.size == 224 and cfg.deviations == ()


def test_resolution_study_feeds_efficientnetv2_s_at_its_own_384():
    """Issue 22 item 4: the seed study resizes to each model's own input resolution."""
    base = {"protocol": "resolution-study", "dataset": "pneumoniamnist", "size": 224}
    eff = make_config("finetune-full", {**base, "model": "tv-efficientnetv2-s"})
    assert eff.input_size == 384 and eff.deviations == ()
    assert make_config("finetune-full", {**base, "model": "tv-resnet50"}).input_size == 224
    forced = make_config("finetune-full", {**base, "model": "tv-efficientnetv2-s", "input_size": 224})
    assert forced.deviations == ("input_size=224",)


def test_protocols_show_prints_per_model_settings(capsys):
    code, out, _ = run(capsys, "protocols", "show", "resolution-study")
    assert code == 0 and "--model tv-efficientnetv2-s" in out and "384" in out


def _user_protocol(tmp_path, name: str):
    """A copy of the shipped medmnist-v2 protocol with its ``name:`` and ``version:`` changed."""
    import yaml

    src = load_protocol("medmnist-v2")
    data = yaml.safe_load(open(src.source))
    data["name"] = name
    data["version"] = int(data.get("version", 1)) + 100  # a different file from the shipped one
    path = tmp_path / f"{name}-file.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.parametrize("name", ["my-lab-recipe", "medmnist-v2"])
def test_a_protocol_file_is_recorded_by_its_path_and_reloads_as_itself(tmp_path, name):
    """A protocol given as a YAML path: the run records that file (not its ``name:``, which may be
    unknown or a shipped protocol's), and the report describes that same file."""
    from fmeval.modes.base import protocol_record

    path = _user_protocol(tmp_path, name)
    cfg = make_config("finetune-full", {"model": "resnet18-medmnist", "dataset": "pneumoniamnist",
                                        "protocol": str(path)})
    rec = protocol_record(cfg)  # the report's protocol section: raised for an unknown name before
    assert rec["name"] == name and rec["sha256"] == load_protocol(str(path)).sha256
    assert cfg.protocol_hash == load_protocol(str(path)).sha256
    assert rec["sha256"] != load_protocol("medmnist-v2").sha256  # not the shipped file of that name
    shipped = make_config("finetune-full", {"model": "resnet18-medmnist", "dataset": "pneumoniamnist",
                                            "protocol": "medmnist-v2"})
    assert shipped.protocol == "medmnist-v2"  # shipped protocols keep their short name
