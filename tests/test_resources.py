"""Shipped files (prompt banks, protocols, studies) and ``--prompts`` resolution.

The wheel side is covered by tests/test_install.py; here: the lookup rules,
from a directory that is not the checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fmeval.errors import PromptBankError
from fmeval.prompts import bank_path, list_shipped_banks, resolve_bank
from fmeval.resources import (
    SHIPPED_KINDS,
    checkout_root,
    find_shipped,
    shipped_dir,
    shipped_files,
    strip_yaml_suffix,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from an empty directory, as a user would."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_checkout_folders_are_found_from_any_directory(elsewhere):
    assert checkout_root() == REPO
    assert shipped_dir("prompts") == REPO / "prompts"
    assert shipped_dir("studies") == REPO / "studies"
    assert shipped_dir("protocols") == REPO / "fmeval" / "protocols"
    names = [p.name for p in shipped_files("prompts")]
    assert "pneumonia.yaml" in names and "README.md" not in names
    assert find_shipped("prompts", "Pneumonia.yaml") == REPO / "prompts" / "pneumonia.yaml"
    assert find_shipped("prompts", "nope") is None
    with pytest.raises(ValueError, match="unknown kind"):
        shipped_dir("weights")
    assert set(SHIPPED_KINDS) == {"prompts", "protocols", "studies"}


def test_strip_yaml_suffix():
    assert [strip_yaml_suffix(n) for n in ("a.yaml", "a.YML", "a", "a.yaml.bak")] == [
        "a", "a", "a", "a.yaml.bak"]


@pytest.mark.parametrize("spec", ["pneumonia", "pneumonia.yaml", "PNEUMONIA.yml", " pneumonia "])
def test_bank_names_resolve_to_the_shipped_bank(elsewhere, spec):
    assert bank_path(spec) == REPO / "prompts" / "pneumonia.yaml"
    assert resolve_bank(spec, "pneumoniamnist").name == "pneumonia"


def test_an_existing_path_wins_over_a_shipped_name(elsewhere):
    own = elsewhere / "pneumonia.yaml"
    own.write_text((REPO / "prompts" / "pneumoniamnist.yaml").read_text())
    assert bank_path("pneumonia.yaml") == Path("pneumonia.yaml")
    assert resolve_bank("pneumonia.yaml", "pneumoniamnist").content_hash == \
        resolve_bank(REPO / "prompts" / "pneumoniamnist.yaml", "pneumoniamnist").content_hash
    assert bank_path("pneumonia") == REPO / "prompts" / "pneumonia.yaml"  # a bare name: shipped


@pytest.mark.parametrize("spec, needle", [
    ("prompts/pneumonia.yaml", "the shipped bank of that name is --prompts pneumonia"),
    ("./pneumonia.yaml", "the shipped bank of that name is --prompts pneumonia"),
    ("pneumonai.yaml", "did you mean the shipped bank pneumonia"),
    ("pneumonai", "Did you mean: pneumonia"),
    ("my/own-bank.yaml", "shipped banks: bloodmnist"),
])
def test_missing_banks_are_one_line_with_a_hint(elsewhere, spec, needle):
    with pytest.raises(PromptBankError) as err:
        bank_path(spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_folder_is_not_a_bank(elsewhere):
    (elsewhere / "banks").mkdir()
    with pytest.raises(PromptBankError, match="is not a file"):
        bank_path("banks")


def test_env_folders_come_first_and_yml_counts(elsewhere, monkeypatch):
    own = elsewhere / "mine"
    own.mkdir()
    (own / "extra.yml").write_text((REPO / "prompts" / "octmnist.yaml").read_text())
    monkeypatch.setenv("FMEVAL_PROMPTS_DIR", str(own))
    banks = list_shipped_banks()
    assert banks["extra"] == own / "extra.yml" and "pneumonia" in banks
    assert resolve_bank("extra.yaml", "octmnist").dataset == "octmnist"
