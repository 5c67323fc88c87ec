"""bf16 fidelity is measured by code, per adapter family, on real PneumoniaMNIST images.

Tiny random models on a subset (the full measurement, with full-size models,
is ``python -m benchmarks.fidelity``). The committed policy table may claim bf16
is safe for a family only if this measurement does not see it failing.
"""

from __future__ import annotations

import math

import pytest

from benchmarks.fidelity import (
    FAMILY_MODELS,
    MIN_COSINE,
    FamilyFidelity,
    MetricShift,
    family_verdicts,
    load_split_subset,
    measure_family,
)


@pytest.fixture(scope="module")
def subset(pneumonia_root):
    return load_split_subset(pneumonia_root / "pneumoniamnist.npz", (240, 80, 160))


@pytest.mark.parametrize("fm", FAMILY_MODELS, ids=lambda fm: fm.family)
def test_bf16_fidelity_of_each_family(fm, subset):
    import fmeval.device as fd

    r = measure_family(fm, subset, tiny=True, n_boot=200, probe_epochs=20)
    assert r.n == (240, 80, 160)
    assert -1.0 <= r.image_cosine["min"] <= r.image_cosine["mean"] <= 1.0 + 1e-9
    assert r.image_cosine["min"] > 0.9  # bf16 of a tiny model is close, but not bit-equal
    probes = {s.probe for s in r.shifts}
    expected = {"knn", "linear"} | ({"zeroshot"} if r.text_cosine is not None else set())
    assert probes == expected
    if fm.family in ("open_clip", "medclip"):
        assert r.text_cosine is not None and r.text_cosine["min"] > 0.9
    for s in r.shifts:
        assert s.fp32_ci[0] <= s.fp32 <= s.fp32_ci[1]
        assert s.inside_ci == (s.fp32_ci[0] <= s.bf16 <= s.fp32_ci[1])
    fd.load_policy.cache_clear()
    if not r.ok:  # what code sees failing, the shipped table must not call safe
        assert not fd.bf16_fidelity_ok(fm.family), (fm.family, r.as_dict())


def _result(cos: float, bf16: float, family: str = "x", size: str = "tiny") -> FamilyFidelity:
    return FamilyFidelity(
        family=family, model="m", size=size, input_size=32, n=(1, 1, 1),
        image_cosine={"min": cos, "p01": cos, "mean": cos}, text_cosine=None,
        shifts=[MetricShift("knn", "acc", 0.80, (0.75, 0.85), bf16, 0.75 <= bf16 <= 0.85)],
    )


def test_verdict_fails_a_metric_outside_its_ci_or_a_low_cosine():
    assert _result(0.9999, 0.82).ok
    assert not _result(0.9999, 0.86).ok  # outside the fp32 CI
    assert not _result(MIN_COSINE - 1e-3, 0.80).ok  # features no longer the same
    v = family_verdicts([_result(0.9999, 0.80, "a"), _result(0.9999, 0.70, "a", "full"),
                         _result(0.9995, 0.81, "b")])
    assert v["a"]["ok"] is False and v["a"]["outside_ci"][0].startswith("full:knn:acc")
    assert v["b"]["ok"] is True and math.isclose(v["b"]["min_cosine"], 0.9995)


def test_shipped_policy_verdicts_are_the_recorded_fidelity_output():
    """The bf16_fidelity entries of the policy table are what benchmarks/fidelity.py
    computes from its recorded measurements (verdicts recomputed here from the numbers)."""
    import json
    from pathlib import Path

    from benchmarks.fidelity import _from_dict
    from fmeval.device import POLICY_FILE

    recorded = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "fidelity.json").read_text())
    verdicts = family_verdicts([_from_dict(r) for r in recorded["results"]])
    table = json.loads(POLICY_FILE.read_text())["families"]
    assert set(verdicts) == {fm.family for fm in FAMILY_MODELS}
    for fam, v in verdicts.items():
        fid = table[fam]["bf16_fidelity"]
        assert fid["ok"] == v["ok"] and fid["sizes"] == v["sizes"] and fid["outside_ci"] == v["outside_ci"]
        assert math.isclose(fid["min_cosine"], v["min_cosine"], abs_tol=1e-6)
        assert "benchmarks/fidelity.py" in fid["source"]
