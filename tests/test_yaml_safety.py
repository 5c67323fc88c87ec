"""Every YAML file fmeval reads (studies, protocols, prompt banks) refuses alias bombs, recursive
aliases and duplicate keys in one line (issue 26), through the one reader, fmeval.yaml_files."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmeval.errors import FmevalError
from helpers import run

LEVELS = 7  # 10^7 strings once expanded: seconds and ~1 GB for anything that walks it, refused at once


def _bomb(key_line: str) -> str:
    lines = [f'l0: &l0 [{", ".join(["lol"] * 10)}]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, LEVELS)]
    return "\n".join(lines) + f"\n{key_line}\n"


STUDY = """name: tiny
axes: {models: [vit-s16], datasets: [pneumoniamnist], modes: [knn]}
"""

CASES = {
    "alias bomb": ("settings: *l%d" % (LEVELS - 1), "aliases expand past"),
    "recursive alias": ("loop: &me [*me]", "recursive alias"),
    "duplicate key": ("name: other", "duplicate key 'name'"),
}


def _study_text(kind: str) -> str:
    extra, _ = CASES[kind]
    if kind == "alias bomb":
        return "name: tiny\naxes: {models: [vit-s16], datasets: [pneumoniamnist], modes: [knn]}\n" \
               + _bomb("settings: {x: *l%d}" % (LEVELS - 1)).replace("l0:", "x_l0:").replace("\nl", "\nx_l")
    return STUDY + extra + "\n"


@pytest.mark.parametrize("kind", list(CASES))
def test_study_file_refuses_in_one_line(capsys, tmp_path, kind):
    path = tmp_path / "study.yaml"
    path.write_text(_study_text(kind))
    code, out, err = run(capsys, "study", "plan", str(path), "--reports-dir", str(tmp_path / "r"))
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 2 and "Traceback" not in err, err  # one error line (soft-wrapped at most once)
    assert CASES[kind][1] in " ".join(err.split()) and "refused" in err


def _protocol(kind: str) -> str:
    base = "name: p\ndescription: x\n"
    if kind == "alias bomb":
        return _bomb("x: 1").replace("x: 1", "") + base + "settings: {a: *l%d}\n" % (LEVELS - 1)
    return base + CASES[kind][0] + "\n"


def _bank(kind: str) -> str:
    base = "dataset: pneumoniamnist\nclasses:\n  normal: [a photo of normal lungs]\n  pneumonia: [pneumonia]\n"
    if kind == "alias bomb":
        return _bomb("") + base + "extra: *l%d\n" % (LEVELS - 1)
    if kind == "duplicate key":
        return base + "dataset: other\n"
    return base + CASES[kind][0] + "\n"


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("reader", ["protocol", "prompt bank"])
def test_protocol_and_prompt_bank_refuse_in_one_line(tmp_path, kind, reader):
    from fmeval.prompts import load_bank
    from fmeval.protocols import load_protocol

    path = tmp_path / f"{reader.replace(' ', '_')}.yaml"
    path.write_text(_protocol(kind) if reader == "protocol" else _bank(kind))
    load = load_protocol if reader == "protocol" else load_bank
    with pytest.raises(FmevalError) as exc:
        load(str(path))
    message = str(exc.value)
    want = CASES[kind][1] if kind != "duplicate key" else "duplicate key"
    assert want in message and "\n" not in message and str(path) in message


def test_the_reader_keeps_ordinary_aliases_and_merge_keys():
    from fmeval.yaml_files import load_yaml

    assert load_yaml("a: &x [1, 2]\nb: *x\nm: &m {k: 1}\nn: {<<: *m, j: 2}") == {
        "a": [1, 2], "b": [1, 2], "m": {"k": 1}, "n": {"k": 1, "j": 2}}
