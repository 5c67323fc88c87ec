"""The precision policy: CPU flags, auto resolution, autocast, channels-last, fidelity."""

from __future__ import annotations

import json

import pytest
import torch

import fmeval.device as fd
from fmeval.errors import ConfigError

CPUINFO_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""
CPUINFO_PLAIN = """processor\t: 0
flags\t\t: fpu sse avx2 avx512f avx512bw avx512vl
"""

POLICY = {
    "families": {
        "vit": {"bf16_fidelity": {"ok": True, "sizes": ["tiny", "full"]},
                "channels_last": {"cpu-fp32": {"use": False}, "cpu-bf16": {"use": True}}},
        "cnn": {"bf16_fidelity": {"ok": True, "sizes": ["tiny", "full"]},
                "channels_last": {"cpu-fp32": {"use": True}, "cpu-bf16": {"use": True},
                                  "cuda-bf16": {"use": True}}},
        "medclip": {"bf16_fidelity": {"ok": False, "sizes": ["tiny"]}},
        "medvit": {"bf16_fidelity": {"ok": True, "sizes": ["tiny"]}},  # full size not measured yet
        "open_clip": {"bf16_fidelity": {"ok": True, "sizes": ["tiny", "full"]},  # faithful, but slow on CPU
                      "bf16_speed": {"cpu": {"use": False, "speedup": 0.31}}},
    }
}


@pytest.fixture
def policy(monkeypatch):
    monkeypatch.setattr(fd, "load_policy", lambda path=None: POLICY)
    return POLICY


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(fd, "cpu_flags", lambda path=fd.CPUINFO: frozenset(CPUINFO_AMX.split()))


@pytest.fixture
def no_bf16(monkeypatch):
    monkeypatch.setattr(fd, "cpu_flags", lambda path=fd.CPUINFO: frozenset(CPUINFO_PLAIN.split()))


def test_cpu_flags_parsed_from_cpuinfo(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text(CPUINFO_AMX)
    flags = fd.cpu_flags(p)
    assert {"amx_bf16", "avx512_bf16", "avx2"} <= flags
    assert fd.cpu_bf16_capable(flags)
    p.write_text(CPUINFO_PLAIN)
    assert not fd.cpu_bf16_capable(fd.cpu_flags(p))
    assert fd.cpu_flags(tmp_path / "missing") == frozenset()
    assert fd.cpu_bf16_capable(frozenset({"avx512_bf16"}))  # AVX-512-BF16 alone suffices
    assert fd.cpu_bf16_capable(frozenset({"amx_bf16"}))


def test_auto_resolves_per_cpu_flags(policy, amx):
    cpu = torch.device("cpu")
    assert fd.resolve_precision("auto", cpu, "vit") == "bf16"
    assert fd.resolve_precision("AUTO", cpu, "cnn") == "bf16"


def test_auto_is_fp32_without_bf16_flags(policy, no_bf16):
    assert fd.resolve_precision("auto", "cpu", "vit") == "fp32"
    assert fd.resolve_precision("auto", "cpu", "cnn") == "fp32"


def test_auto_on_cuda_is_bf16_except_failed_fidelity(policy, no_bf16):
    cuda = torch.device("cuda")  # a device object; nothing runs on it
    assert fd.resolve_precision("auto", cuda, "vit") == "bf16"
    assert fd.resolve_precision("auto", cuda, "medclip") == "fp32"  # fidelity failed
    assert fd.resolve_precision("auto", cuda, "never-measured") == "bf16"  # historical GPU default


def test_auto_on_capable_cpu_needs_a_measured_pass(policy, amx):
    assert fd.resolve_precision("auto", "cpu", "never-measured") == "fp32"
    assert fd.resolve_precision("auto", "cpu", "medvit") == "fp32"  # tiny-only pass: not enough
    assert fd.resolve_precision("auto", "cuda", "medvit") == "bf16"  # GPU: the historical default
    assert fd.resolve_precision("auto", "cpu", None) == "bf16"  # feature-space GEMMs: no family gate


def test_auto_keeps_fp32_for_failed_family_on_capable_cpu(policy, amx):
    assert fd.resolve_precision("auto", "cpu", "medclip") == "fp32"


def test_auto_keeps_fp32_where_bf16_was_measured_slower(policy, amx):
    assert fd.resolve_precision("auto", "cpu", "open_clip") == "fp32"  # 0.31x on this kind of CPU
    assert fd.resolve_precision("auto", "cuda", "open_clip") == "bf16"  # not measured slower on a GPU
    assert fd.resolve_precision("bf16", "cpu", "open_clip") == "bf16"  # asked for: honoured
    assert fd.bf16_faster("vit", "cpu") is True  # not measured: native bf16 is taken to be faster


def test_explicit_precision_is_honoured(policy, no_bf16):
    assert fd.resolve_precision("bf16", "cpu", "medclip") == "bf16"
    assert fd.resolve_precision("fp32", "cuda", "vit") == "fp32"
    with pytest.raises(ConfigError, match="unknown precision"):
        fd.resolve_precision("fp16", "cpu", "vit")


def test_autocast_bf16_on_cpu_and_fp32_overrides_outer():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    cpu = torch.device("cpu")
    with fd.autocast(cpu):  # legacy call: a no-op on CPU
        assert lin(x).dtype == torch.float32
    with fd.autocast(cpu, "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16), fd.autocast(cpu, "fp32"):
        assert lin(x).dtype == torch.float32
    with pytest.raises(ConfigError, match="resolved"):
        fd.autocast(cpu, "auto")


def test_channels_last_from_the_table(policy):
    assert fd.use_channels_last("cnn", "cpu", "fp32") is True
    assert fd.use_channels_last("vit", "cpu", "fp32") is False
    assert fd.use_channels_last("vit", "cpu", "bf16") is True
    # no measurement: the historical default (channels-last on CUDA only)
    assert fd.use_channels_last("medvit", "cpu", "bf16") is False
    assert fd.use_channels_last("medvit", "cuda", "bf16") is True
    conv = torch.nn.Conv2d(3, 8, 3)
    fd.prepare_module(conv, "cnn", "cpu", "fp32")
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    fd.prepare_module(conv, "vit", "cpu", "fp32")
    assert conv.weight.is_contiguous()


def test_shipped_policy_table_is_consistent():
    """Every family of the built-in adapters has measured entries with their numbers."""
    fd.load_policy.cache_clear()
    table = json.loads(fd.POLICY_FILE.read_text())["families"]
    from fmeval.adapters.base import ADAPTERS
    import fmeval.adapters  # noqa: F401

    # 2D families are measured on PneumoniaMNIST; the 3D ones are not (auto: fp32 on CPU for them)
    families = {e.tags["family"] for e in ADAPTERS if e.tags.get("ndim", "2") != "3"}
    assert families <= set(table), families - set(table)
    from benchmarks.fidelity import FAMILY_MODELS

    assert families == {fm.family for fm in FAMILY_MODELS}
    for fam in families:
        fid = table[fam]["bf16_fidelity"]
        assert isinstance(fid["ok"], bool) and "source" in fid
        assert fid["ok"] == (not fid["outside_ci"] and fid["min_cosine"] >= 0.99)
        for key, entry in table[fam].get("channels_last", {}).items():
            assert key in ("cpu-fp32", "cpu-bf16", "cuda-fp32", "cuda-bf16")
            assert isinstance(entry["use"], bool) and entry.get("source")
        for dev, entry in table[fam].get("bf16_speed", {}).items():
            assert dev in ("cpu", "cuda") and isinstance(entry["use"], bool) and entry.get("source")
            assert entry["use"] or entry["speedup"] < 1.0  # fp32 only where bf16 was measured slower


def test_readme_shows_the_shipped_policy():
    from benchmarks.policy_table import policy_markdown

    readme = (fd.POLICY_FILE.parents[1] / "README.md").read_text()
    assert policy_markdown(json.loads(fd.POLICY_FILE.read_text())).strip() in readme


def test_channels_last_decision_needs_a_measured_repeatable_gain():
    from benchmarks.channels_last import GAIN, decide

    def row(model, size, base, cl, tiny=False):
        return {"tiny": tiny, "model": model, "input_size": size,
                "seconds": {"fp32": base, "fp32+cl": cl, "bf16": base, "bf16+cl": cl}}

    fast = row("a", 224, [1.0, 1.1, 1.0], [0.5, 0.6, 0.55])  # 2x, every repeat
    mixed = row("b", 64, [1.0, 1.0, 1.0], [0.7, 1.2, 0.8])  # median 1.25x, lost one repeat
    tiny = row("a", 32, [1.0, 1.0, 1.0], [9.0, 9.0, 9.0], tiny=True)  # tiny models never decide
    d = decide([fast, tiny], "fp32")
    assert d["use"] is True and d["won_every_repeat"] and set(d["models"]) == {"a@224"}
    assert d["speedup"] == pytest.approx(1.1 / 0.6, rel=1e-3)  # median of 2.0, 1.83, 1.82
    d = decide([fast, mixed], "fp32")
    assert d["use"] is False and not d["won_every_repeat"]  # noise veto
    slow = row("c", 224, [1.0, 1.0, 1.0], [0.95, 0.94, 0.96])  # 1.05x: below the gain threshold
    assert decide([slow], "bf16")["use"] is False and GAIN > 1.05


def test_bf16_speed_decision_keeps_bf16_unless_measurably_slower():
    from benchmarks.channels_last import GAIN, _decisions, decide_bf16

    def row(model, size, fp32, bf16, tiny=False, cl=None):
        cl = cl or {}
        return {"tiny": tiny, "model": model, "input_size": size,
                "seconds": {"fp32": fp32, "fp32+cl": cl.get("fp32", fp32), "bf16": bf16,
                            "bf16+cl": cl.get("bf16", bf16)}}

    slow = row("clip", 224, [1.0, 1.0, 1.1], [3.0, 3.1, 2.9])  # bf16 3x slower, every repeat
    d = decide_bf16([slow, row("clip", 32, [1, 1, 1], [0.1, 0.1, 0.1], tiny=True)], {"fp32": False, "bf16": False})
    assert d["use"] is False and d["lost_every_repeat"] and set(d["models"]) == {"clip@224"}
    assert d["speedup"] == pytest.approx(1.0 / 3.0, rel=1e-3)
    fast = row("vit", 224, [3.0, 3.0, 3.0], [1.0, 1.1, 0.9])
    assert decide_bf16([fast], {"fp32": False, "bf16": False})["use"] is True
    noisy = row("x", 224, [1.0, 1.0, 1.0], [1.3, 0.9, 1.4])  # slower in median, won one repeat
    assert decide_bf16([noisy], {"fp32": False, "bf16": False})["use"] is True
    near = row("y", 224, [1.0, 1.0, 1.0], [1.05, 1.05, 1.05])  # 5 % slower: within the threshold
    assert decide_bf16([near], {"fp32": False, "bf16": False})["use"] is True and 1 / GAIN < 1 / 1.05
    # each precision in its chosen layout: bf16 slow contiguous but fast channels-last (a CNN)
    cnn = row("resnet50", 224, [1.0, 1.0, 1.0], [2.0, 2.0, 2.0], cl={"fp32": [1.0] * 3, "bf16": [0.4] * 3})
    out = _decisions([cnn], "cpu")
    assert out["decisions"]["cpu-bf16"]["use"] is True
    assert out["bf16_speed"]["use"] is True and out["bf16_speed"]["speedup"] == pytest.approx(2.5)
    assert "bf16_speed" not in _decisions([{**cnn, "seconds": {"fp32": [1.0], "fp32+cl": [1.0]}}], "cpu")
