"""Protocol caveats: a known difference from the source that applies to some (mode, model) runs only is
recorded in each of their reports, not only listed under ``silent``. (The shipped medmnist-plus caveat of
issue 22 item 2 is gone: its probe is now reproduced, tests/test_probe_backbone_train.py; the mechanism is
checked here with a protocol file of its own.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from fmeval.protocols import load_protocol

CAVEAT = "the reference crops a border this run keeps"


@pytest.fixture()
def protocol_file(tmp_path):
    import fmeval.protocols

    text = (Path(fmeval.protocols.__file__).parent / "medmnist-plus.yaml").read_text()
    text += f"caveats:\n  - modes: [linprobe]\n    models: [resnet18, tv-alexnet]\n    text: \"{CAVEAT}\"\n"
    path = tmp_path / "plus-with-caveat.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("mode,model,expected", [
    ("linprobe", "resnet18", True), ("linprobe", "tv-alexnet", True), ("linprobe", "efficientnet-b4", False),
    ("linprobe", "vit-b16", False), ("knn", "resnet18", False), ("finetune-full", "resnet18", False),
])
def test_caveat_is_recorded_only_for_the_runs_it_applies_to(protocol_file, mode, model, expected):
    rec = load_protocol(protocol_file).describe((), mode=mode, model=model)
    assert rec.get("caveats") == ([CAVEAT] if expected else None)


def test_the_report_states_a_recorded_caveat(protocol_file):
    from types import SimpleNamespace

    from fmeval.report.markdown import protocol_line

    rec = load_protocol(protocol_file).describe((), mode="linprobe", model="resnet18")
    line = protocol_line(SimpleNamespace(protocol=rec, deviations=[]))
    assert line.endswith(f"no deviations. Known difference from the source: {CAVEAT}")
