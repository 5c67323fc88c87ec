"""The one real pretrained encoder these machines have, evaluated by spec (issue 20).

``tf_efficientnet_lite0.timm.safetensors`` (shared/weights, ImageNet-1k) is not a
registered model: it runs as ``timm:tf_efficientnet_lite0.in1k --weights FILE``. It must
load every key but the classifier, use timm's own data config for the tag (224 px,
bicubic, mean = std = 0.5), and its features must beat the same architecture's random
initialisation on real PneumoniaMNIST (a check that the weights are really used: a
loader that silently kept random values would tie). A random CNN's kNN features are
far from useless on PneumoniaMNIST (AUC ~0.8), so the margin is modest.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, require_shared
from helpers import run

WEIGHTS = REPO.parent / "shared" / "weights" / "tf_efficientnet_lite0.timm.safetensors"
SPEC = "timm:tf_efficientnet_lite0.in1k"


@pytest.fixture(scope="module")
def weights() -> Path:
    return require_shared(WEIGHTS)


def test_every_key_loads_and_timm_data_config_is_used(weights):
    from safetensors import safe_open

    from fmeval.adapters import create_adapter

    a = create_adapter(SPEC, weights=weights)
    rep = a.load_report
    assert rep.missing == [] and rep.unexpected == [] and rep.shape_mismatch == [] and rep.complete
    with safe_open(str(weights), "pt") as f:
        keys = set(f.keys())
    assert keys - set(a.model.state_dict()) == {"classifier.weight", "classifier.bias"}  # only the head
    pre = a.preprocess
    assert (pre.input_size, pre.interpolation, pre.mean, pre.std) == (224, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert a.weights_id.startswith("file:2b4a5f7e9a1870e2")  # the file's SHA-256 prefix
    assert a.model_spec["resolved"] == "tf_efficientnet_lite0.in1k"


def test_pretrained_beats_its_random_init_twin_on_pneumoniamnist(weights, pneumonia_root, tmp_path,
                                                                 monkeypatch, capsys):
    """Linear probe, the comparison that holds on the full dataset (README table: 0.933 vs 0.888).
    kNN is run on the same cached features and only checked to beat chance: on the full
    PneumoniaMNIST the random twin's kNN is slightly ahead (0.930 vs 0.915, CIs overlapping)."""
    monkeypatch.setenv("FMEVAL_DATA_ROOT", str(pneumonia_root))
    monkeypatch.chdir(tmp_path)
    common = ("--dataset", "pneumoniamnist", "--limit", "200", "--bootstrap", "200")
    auc: dict[tuple[str, str], dict] = {}
    for label, extra in (("pretrained", ("--weights", str(weights))), ("random", ("--random-init",))):
        for mode in ("knn", "linprobe"):
            code, out, err = run(capsys, mode, "--model", SPEC, *common, *extra)
            assert code == 0, err
    for path in (tmp_path / "reports").glob("*/results.json"):
        rep = json.loads(path.read_text())
        label = "pretrained" if rep["model"]["weights_id"].startswith("file:") else "random"
        assert rep["model"]["model_spec"]["spec"] == SPEC
        if label == "pretrained":
            assert rep["model"]["weights_load"]["complete"] and rep["model"]["weights_load"]["missing"] == 0
        auc[(label, rep["mode"])] = rep["test"]["metrics"]["auc"]
    assert len(auc) == 4
    assert auc[("pretrained", "linprobe")]["value"] > auc[("random", "linprobe")]["value"], auc
    assert min(a["ci_low"] for a in auc.values()) > 0.5, auc
