"""Any model by spec (issue 20): timm:, open_clip:, hf:, torchvision:, file.py:factory, plugins.

Every spec kind runs from the CLI, as typed, from a temporary folder, on the real
PneumoniaMNIST, with tiny or random models of the real classes (nothing is downloaded),
and its report names the spec, the resolved tag or revision and the feature pooling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import only_report, run
from model_fixtures import save_hf, write_encoder, write_plugin

REPO = Path(__file__).resolve().parents[1]
FAST = ("--dataset", "pneumoniamnist", "--limit", "48", "--bootstrap", "20")


@pytest.fixture
def data_env(pneumonia_root, monkeypatch, tmp_path):
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(pneumonia_root))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _report(tmp_path: Path) -> dict:
    return only_report(tmp_path / "reports")


# --------------------------------------------------------------------------- #
# Grammar
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("text, kind, fields", [
    ("timm:resnet18.a1_in1k", "timm", {"arch": "resnet18", "tag": "a1_in1k"}),
    ("timm:convnext_tiny", "timm", {"arch": "convnext_tiny", "tag": None}),
    ("open_clip:ViT-B-32/openai", "open_clip", {"arch": "ViT-B-32", "pretrained": "openai"}),
    ("open_clip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "open_clip",
     {"arch": "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "pretrained": None}),
    ("hf:microsoft/rad-dino", "hf", {"repo": "microsoft/rad-dino", "revision": None, "local": False}),
    ("hf:google/siglip-base-patch16-224@main", "hf", {"repo": "google/siglip-base-patch16-224",
                                                        "revision": "main"}),
    ("hf:./my-model", "hf", {"local": True}),
    ("torchvision:resnet50:IMAGENET1K_V2", "torchvision", {"arch": "resnet50", "weights": "IMAGENET1K_V2"}),
    ("./my_encoder.py:build", "code", {"path": Path("my_encoder.py"), "factory": "build"}),
    ("my_pkg.models:make", "code", {"module": "my_pkg.models", "factory": "make"}),
])
def test_spec_grammar(text, kind, fields):
    from fmeval.adapters.specs import parse_spec

    spec = parse_spec(text)
    assert spec.kind == kind and spec.text == text
    for k, v in fields.items():
        assert getattr(spec, k) == v, k


@pytest.mark.parametrize("text", ["timm:", "open_clip:ViT-B-32", "hf:not a repo", "./x.py:", "a b:c"])
def test_malformed_specs_fail_in_one_line(text):
    from fmeval.adapters.specs import parse_spec
    from fmeval.errors import ModelError

    with pytest.raises(ModelError, match="bad model spec"):
        parse_spec(text)


def test_short_names_are_aliases_of_specs_in_the_one_registry():
    from fmeval.adapters import ADAPTERS

    assert ADAPTERS.entry("vit-b16").tags["spec"] == "timm:vit_base_patch16_224.augreg2_in21k_ft_in1k"
    assert ADAPTERS.entry("clip-vit-b32").tags["spec"] == "open_clip:ViT-B-32/openai"
    # a spec is looked up through the same registry, keeping its case
    e = ADAPTERS.entry("timm:tf_efficientnet_lite0")
    assert e.name == "timm:tf_efficientnet_lite0" and e.tags["weights"] == "timm:tf_efficientnet_lite0.in1k"
    assert "timm:tf_efficientnet_lite0" in ADAPTERS and "timm:nope_net" not in ADAPTERS


# --------------------------------------------------------------------------- #
# Each kind, from the CLI
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("spec, extra, resolved, pooling", [
    ("timm:resnet18.a1_in1k", ("--random-init", "--input-size", "32"), "resnet18.a1_in1k", "global_pool=avg"),
    ("timm:resnet18", ("--random-init", "--input-size", "32"), "resnet18.a1_in1k", "global_pool=avg"),
    ("torchvision:resnet18", ("--random-init", "--input-size", "32"), "torchvision:resnet18.IMAGENET1K_V1",
     "fc replaced by Identity"),
    ("open_clip:ViT-B-32/openai", ("--random-init", "--input-size", "64"), "open_clip:ViT-B-32/openai",
     "image embedding after projection"),
])
def test_knn_on_hub_specs(data_env, capsys, spec, extra, resolved, pooling):
    code, out, err = run(capsys, "knn", "--model", spec, *FAST, *extra)
    assert code == 0, err
    rep = _report(data_env)
    assert rep["model"]["name"] == spec
    assert rep["model"]["model_spec"]["spec"] == spec
    assert rep["model"]["model_spec"]["resolved"] == resolved
    assert pooling in rep["model"]["pooling"]
    assert rep["model"]["weights_id"].startswith("random:")
    board = (data_env / "reports" / "runs.csv").read_text()
    assert f",{spec}," in board  # on the leaderboard under its spec


@pytest.mark.parametrize("kind, pool", [("vit", "cls"), ("dinov2", "cls"), ("clip", "embed"), ("siglip", "embed")])
def test_hf_folder_knn_and_linprobe(data_env, capsys, kind, pool):
    folder = save_hf(kind, data_env / f"tiny-{kind}")
    spec = f"hf:{folder}"
    for mode in ("knn", "linprobe"):
        code, out, err = run(capsys, mode, "--model", spec, *FAST)
        assert code == 0, err
    reps = [json.loads(p.read_text()) for p in (data_env / "reports").glob("*/results.json")]
    assert len(reps) == 2
    for rep in reps:
        ms = rep["model"]["model_spec"]
        assert ms["spec"] == spec and ms["pool"] == pool and ms["resolved"].startswith(f"{folder}@sha256:")
        assert rep["model"]["weights_id"].startswith("hf:local@sha256:")
    # the second mode read the first one's features from the cache
    assert {r["mode"] for r in reps} == {"knn", "linprobe"}


def test_hf_pool_choice_is_recorded_and_keyed(data_env, capsys):
    folder = save_hf("dinov2", data_env / "tiny-dinov2")
    ids = {}
    for pool in ("cls", "mean"):
        code, out, err = run(capsys, "knn", "--model", f"hf:{folder}", "--pool", pool, *FAST)
        assert code == 0, err
    for p in (data_env / "reports").glob("*/results.json"):
        rep = json.loads(p.read_text())
        ids[rep["model"]["model_spec"]["pool"]] = rep["model"]["weights_id"]
    assert ids["mean"] == ids["cls"] + "#pool=mean"  # another output, another cache entry
    code, out, err = run(capsys, "knn", "--model", f"hf:{folder}", "--pool", "embed", *FAST)
    assert code == 2 and "not offered" in err and "Traceback" not in err


def test_user_file_factory_and_cache_follows_the_code(data_env, capsys):
    write_encoder(data_env, seed=0)
    code, out, err = run(capsys, "knn", "--model", "./my_encoder.py:build", *FAST)
    assert code == 0, err
    first = _report(data_env)
    assert first["model"]["model_spec"]["spec"] == "./my_encoder.py:build"
    assert first["model"]["preprocess"]["std"] == [0.25, 0.25, 0.25]  # the module's own attributes
    assert first["model"]["pooling"] == "the module's own output"
    code, out, err = run(capsys, "knn", "--model", "./my_encoder.py:build", *FAST)
    again = [json.loads(p.read_text()) for p in (data_env / "reports").glob("*/results.json")]
    assert {r["model"]["weights_id"] for r in again} == {first["model"]["weights_id"]}
    from fmeval.adapters import create_adapter

    before = create_adapter("./my_encoder.py:build").model.conv.weight.detach().clone()
    write_encoder(data_env, seed=1)  # other weights: another weights id, so the cache misses
    after = create_adapter("./my_encoder.py:build").model.conv.weight.detach()
    assert not torch.equal(before, after)  # the edited file was imported afresh
    code, out, err = run(capsys, "knn", "--model", "./my_encoder.py:build", *FAST)
    ids = {json.loads(p.read_text())["model"]["weights_id"] for p in (data_env / "reports").glob("*/results.json")}
    assert len(ids) == 2


def _cli(args, cwd: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "fmeval", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_installed_plugin_is_listed_and_runs(data_env):
    site = write_plugin(data_env / "site")
    ls = _cli(["ls", "models"], data_env, site)
    assert ls.returncode == 0 and "demo-encoder" in ls.stdout and "plugin (fmeval-demo-plugin)" in ls.stdout
    res = _cli(["knn", "--model", "demo-encoder", *FAST], data_env, site)
    assert res.returncode == 0, res.stderr
    rep = _report(data_env)
    ms = rep["model"]["model_spec"]
    assert ms["kind"] == "plugin" and ms["package"] == "fmeval-demo-plugin"
    assert rep["model"]["weights_id"].startswith("plugin:")


# --------------------------------------------------------------------------- #
# Bad specs: one line, exit 2
# --------------------------------------------------------------------------- #
def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[0].startswith("error:")
    return " ".join(lines)


def test_bad_specs_fail_in_one_line_before_any_model_work(data_env, capsys):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(data_env / "bert")
    write_encoder(data_env)
    capsys.readouterr()
    cases = {
        "timm:resnet19": "Close matches: resnet18",
        "timm:resnet18.a9_in1k": "a1_in1k",
        "open_clip:ViT-B-32/opnai": "openai",
        f"hf:{data_env / 'bert'}": "not a vision model",
        "./my_encoder.py:missing": "no function 'missing'",
        "./my_encoder.py:not_a_model": "returned str",
        "./nowhere.py:build": "no file",
        "torchvision:resnet19": "Close matches: resnet18",
    }
    for spec, words in cases.items():
        code, out, err = run(capsys, "knn", "--model", spec, *FAST)
        assert words in _one_line_error(code, err), (spec, err)


def test_plugin_that_fails_to_import_names_its_package(data_env):
    site = write_plugin(data_env / "site", broken=True)
    res = _cli(["knn", "--model", "demo-encoder", *FAST], data_env, site)
    msg = _one_line_error(res.returncode, res.stderr)
    assert "fmeval-demo-plugin" in msg and "not_installed_dependency" in msg


# --------------------------------------------------------------------------- #
# models show
# --------------------------------------------------------------------------- #
def test_models_show_every_registered_name_tiny():
    from fmeval.adapters import ADAPTERS
    from fmeval.adapters.show import resolve_model

    for e in ADAPTERS:
        if "plugin" in e.tags or e.tags.get("ndim") == "3":
            continue
        r = resolve_model(e.name, tiny=True, pretrained=False)
        assert r.spec == e.tags.get("spec", e.name) and r.feature_dim > 0 and r.parameters > 0
        assert r.input_size > 0 and len(r.mean) == 3 and r.pooling


def test_models_show_prints_each_spec_kind(data_env, capsys):
    write_encoder(data_env)
    siglip = save_hf("siglip", data_env / "tiny-siglip")
    cases = {
        "timm:tf_efficientnet_lite0": ("tf_efficientnet_lite0.in1k", "bicubic", "1280", "global_pool=avg"),
        "torchvision:resnet18": ("IMAGENET1K_V1", "bilinear", "512"),
        "open_clip:ViT-B-32/openai": ("softmax scoring", "quickgelu"),
        f"hf:{siglip}": ("sigmoid scoring", "embed, pooler, mean", "attention linears found by module type"),
        "./my_encoder.py:build": ("code:", "0.25"),
        "vit-b16": ("timm:vit_base_patch16_224.augreg2_in21k_ft_in1k", "qkv, attn.proj"),
    }
    for spec, words in cases.items():
        args = ("--random-init",) if not spec.endswith(":build") else ()
        code, out, err = run(capsys, "models", "show", spec, *args)
        assert code == 0, (spec, err)
        flat = " ".join(out.split())
        for w in words:
            assert w in flat, (spec, w, out)


# --------------------------------------------------------------------------- #
# Zero-shot scoring and LoRA
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("kind, scoring", [("siglip", "sigmoid"), ("clip", "softmax")])
def test_zeroshot_uses_the_models_own_scoring(data_env, capsys, kind, scoring):
    folder = save_hf(kind, data_env / f"tiny-{kind}")
    code, out, err = run(capsys, "zeroshot", "--model", f"hf:{folder}", *FAST)
    assert code == 0, err
    rep = _report(data_env)
    assert rep["extras"]["scoring"] == scoring
    assert rep["model"]["model_spec"]["zeroshot_scoring"] == scoring
    if kind == "siglip":
        assert rep["extras"]["logit_bias"] == pytest.approx(-10.0)
        assert rep["extras"]["logit_scale"] == pytest.approx(10.0, rel=1e-5)


def test_sigmoid_scoring_is_the_normalised_sigmoid():
    from fmeval.zeroshot import zeroshot_probs

    g = torch.Generator().manual_seed(0)
    img, text = torch.randn(5, 8, generator=g), torch.randn(3, 8, generator=g)
    cos = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(text, dim=-1).T
    p = zeroshot_probs(img, text, logit_scale=10.0, scoring="sigmoid", logit_bias=-10.0)
    s = torch.sigmoid(10.0 * cos - 10.0)
    assert torch.allclose(p, s / s.sum(1, keepdim=True), atol=1e-6)
    unbiased = zeroshot_probs(img, text, logit_scale=10.0, scoring="sigmoid", logit_bias=0.0)
    assert not torch.allclose(unbiased, (10.0 * cos).softmax(1), atol=1e-2)  # not a softmax
    far = zeroshot_probs(img, text, logit_scale=100.0, scoring="sigmoid", logit_bias=-200.0)
    assert torch.isfinite(far).all() and torch.allclose(far.sum(1), torch.ones(5))  # no underflow


def test_lora_one_epoch_on_an_hf_spec_records_found_targets(data_env, capsys):
    folder = save_hf("vit", data_env / "tiny-vit")
    code, out, err = run(capsys, "finetune", "--lora", "--model", f"hf:{folder}", *FAST, "--epochs", "1")
    assert code == 0, err
    assert "LoRA targets of hf:" in err and "attention linears found by module type" in err
    rep = _report(data_env)
    assert rep["model"]["lora_rule"] == "attention linears found by module type"
    assert "attention.q_proj" in rep["model"]["lora_targets"]


def test_lora_targets_override(data_env, capsys):
    folder = save_hf("vit", data_env / "tiny-vit")
    code, out, err = run(capsys, "finetune", "--lora", "--model", f"hf:{folder}", *FAST, "--epochs", "1",
                         "--lora-targets", "attention.q_proj,attention.v_proj")
    assert code == 0, err
    rep = _report(data_env)
    assert rep["model"]["lora_rule"] == "--lora-targets"
    assert rep["model"]["lora_targets"] == ["attention.q_proj", "attention.v_proj"]


# --------------------------------------------------------------------------- #
# Studies
# --------------------------------------------------------------------------- #
def test_study_yaml_lists_specs_in_its_models_axis(pneumonia_root, tmp_path, monkeypatch):
    from fmeval.studies.executors import EXECUTORS
    from fmeval.studies.finish import finished_runs
    from fmeval.studies.plan import plan_study
    from fmeval.studies.spec import load_study

    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(pneumonia_root))
    spec, digest = load_study(REPO / "studies" / "any-models.yaml")
    plan = plan_study(spec, digest, reports_root=tmp_path / "reports")
    cells = {(c.axes["model"], c.axes["mode"]) for c in plan.cells}
    # zero-shot only where the spec has a text tower
    assert ("open_clip:ViT-B-32/openai", "zeroshot") in cells
    assert ("timm:resnet18.a1_in1k", "zeroshot") not in cells and ("timm:resnet18.a1_in1k", "knn") in cells
    assert len(plan.cells) == 9
    counts = EXECUTORS.get("local").run(plan)
    assert counts["done"] == 9, counts
    runs, problems = finished_runs(plan)
    assert not problems
    assert {r.model["name"] for r in runs} == {"resnet18", "timm:resnet18.a1_in1k", "torchvision:resnet18",
                                               "open_clip:ViT-B-32/openai"}


def test_unknown_family_gets_the_conservative_precision_and_the_report_says_so(data_env, capsys):
    from fmeval.device import precision_rule, resolve_precision

    assert resolve_precision("auto", "cpu", "user") == "fp32"
    assert "never measured" in precision_rule("auto", "cpu", "user") or "no native bf16" in precision_rule(
        "auto", "cpu", "user")
    write_encoder(data_env)
    code, out, err = run(capsys, "knn", "--model", "./my_encoder.py:build", *FAST)
    assert code == 0, err
    rep = _report(data_env)
    assert rep["precision"] == "fp32" and rep["model"]["family"] == "user"
    assert rep["extras"]["precision_rule"] == precision_rule("auto", "cpu", "user")
    code, out, err = run(capsys, "knn", "--model", "./my_encoder.py:build", *FAST, "--precision", "bf16")
    assert code == 0, err
    reps = [json.loads(p.read_text()) for p in (data_env / "reports").glob("*/results.json")]
    assert {r["extras"]["precision_rule"] for r in reps} >= {"explicit --precision bf16"}


@pytest.mark.parametrize("spec, extra", [
    ("timm:resnet18.a1_in1k", ("--random-init", "--input-size", "32")),
    ("torchvision:resnet18", ("--random-init", "--input-size", "32")),
    ("./my_encoder.py:build", ()),
])
def test_linprobe_and_one_lora_epoch_on_specs(data_env, capsys, spec, extra):
    write_encoder(data_env)
    code, out, err = run(capsys, "linprobe", "--model", spec, *FAST, *extra)
    assert code == 0, err
    code, out, err = run(capsys, "finetune", "--lora", "--model", spec, *FAST, *extra, "--epochs", "1")
    assert code == 0, err
    assert f"LoRA targets of {spec}" in err  # found by module type: printed
    reps = {json.loads(p.read_text())["mode"]: json.loads(p.read_text())
            for p in (data_env / "reports").glob("*/results.json")}
    assert set(reps) == {"linprobe", "finetune-lora"}
    lora = reps["finetune-lora"]["model"]
    assert lora["model_spec"]["spec"] == spec and lora["lora_targets"] and lora["lora_rule"]


def test_open_clip_spec_zero_shot(data_env, capsys):
    code, out, err = run(capsys, "zeroshot", "--model", "open_clip:ViT-B-32/openai", "--random-init",
                         "--input-size", "64", *FAST)
    assert code == 0, err
    rep = _report(data_env)
    assert rep["extras"]["scoring"] == "softmax" and rep["model"]["model_spec"]["spec"] == "open_clip:ViT-B-32/openai"


def test_hub_revision_resolves_to_its_commit_hash(data_env, capsys, monkeypatch):
    """A hub repo as the Hugging Face cache holds it (refs/main -> snapshots/<commit>): the
    commit, not the branch name, is in the weights id and the report."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = data_env / "hub" / "models--fmeval-test--tiny-dinov2"
    save_hf("dinov2", repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(data_env / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(data_env / "hub"))
    capsys.readouterr()
    code, out, err = run(capsys, "knn", "--model", "hf:fmeval-test/tiny-dinov2", *FAST)
    assert code == 0, err
    rep = _report(data_env)
    assert rep["model"]["weights_id"] == f"hf:fmeval-test/tiny-dinov2@{commit}"
    assert rep["model"]["model_spec"]["resolved"] == f"fmeval-test/tiny-dinov2@{commit}"


def test_mean_and_std_options_for_a_plain_module_factory(data_env, capsys):
    """A factory's module without ``mean``/``std`` attributes runs with --mean/--std (recorded in the
    preprocessing, hence in the cache key); without them it is one line; other families refuse them."""
    text = (write_encoder(data_env).read_text().replace("    mean = (0.5, 0.5, 0.5)\n", "")
            .replace("    std = (0.25, 0.25, 0.25)\n", ""))
    (data_env / "bare_encoder.py").write_text(text)
    code, out, err = run(capsys, "knn", "--model", "./bare_encoder.py:build", *FAST)
    assert code == 2 and "without mean, std" in err and "--mean" in err and "Traceback" not in err
    code, out, err = run(capsys, "knn", "--model", "./bare_encoder.py:build", "--mean", "0.4,0.4,0.4",
                         "--std", "0.2,0.3,0.2", *FAST)
    assert code == 0, err
    rep = _report(data_env)
    assert rep["model"]["preprocess"]["mean"] == [0.4, 0.4, 0.4]
    assert rep["transform"]["std"] == [0.2, 0.3, 0.2]
    assert rep["config"]["mean"] == [0.4, 0.4, 0.4]
    for bad, says in ((("--model", "vit-s16", "--tiny", "--mean", "0.5,0.5,0.5"), "apply to models from your own code"),
                      (("--model", "./bare_encoder.py:build", "--mean", "0.5,0.5"), "3 comma-separated"),
                      (("--model", "./bare_encoder.py:build", "--mean", "0.5,0.5,0.5", "--std", "0,1,1"), "> 0")):
        code, out, err = run(capsys, "knn", *bad, *FAST)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
