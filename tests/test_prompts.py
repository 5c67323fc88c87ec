"""Prompt banks: shipped banks validate against medmnist.INFO; broken ones fail clearly."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from medmnist.info import INFO

from fmeval.errors import PromptBankError
from fmeval.prompts import (
    PromptBank,
    list_shipped_banks,
    load_bank,
    resolve_bank,
    shipped_bank_path,
)

FLAGS_2D = [
    "pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
    "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist",
]
SHIPPED = [(f, f) for f in FLAGS_2D] + [("pneumonia", "pneumoniamnist")]


# --------------------------------------------------------------------------- #
# Shipped banks
# --------------------------------------------------------------------------- #
def test_every_2d_dataset_and_pneumonia_is_shipped():
    assert set(list_shipped_banks()) >= {f for f, _ in SHIPPED}


@pytest.mark.parametrize("name,flag", SHIPPED, ids=[n for n, _ in SHIPPED])
def test_shipped_bank_validates(name, flag):
    bank = load_bank(shipped_bank_path(name), dataset=flag)
    info = INFO[flag]
    assert bank.dataset == flag
    assert bank.class_names == [info["label"][str(i)] for i in range(len(info["label"]))]
    assert bank.multi_label == ("multi-label" in info["task"])
    assert {"basic", "templates"} <= set(bank.styles)
    assert {"medical", "descriptive"} & set(bank.styles), "needs a CuPL-style free-text style"
    assert bank.default_style in bank.styles
    assert len(bank.spec.sources) >= 2
    assert re.fullmatch(r"[0-9a-f]{64}", bank.content_hash)
    for display in bank.display_names:
        assert display and display == display.strip()

    for style in bank.styles:
        if bank.multi_label:
            pairs = bank.pairs(style)
            assert len(pairs) == bank.num_classes
            per_class = [p + n for p, n in pairs]
            assert all(p and n for p, n in pairs), style
        else:
            per_class = bank.prompts(style)
            assert len(per_class) == bank.num_classes
        for prompts in per_class:
            assert prompts, f"{name}: style {style} leaves a class without prompts"
            for p in prompts:
                assert isinstance(p, str) and p.strip() == p and p
                assert "{" not in p and "}" not in p, p
        # every single template is usable as a pseudo-style
        for pseudo in bank.single_templates(style):
            got = bank.pairs(pseudo) if bank.multi_label else bank.prompts(pseudo)
            assert len(got) == bank.num_classes


def test_templates_style_has_several_modality_templates():
    for name, flag in SHIPPED:
        bank = load_bank(shipped_bank_path(name))
        assert len(bank.single_templates("templates")) >= 3, name


def test_display_names_fix_poor_medmnist_labels():
    retina = load_bank(shipped_bank_path("retinamnist"))
    assert retina.class_names == ["0", "1", "2", "3", "4"]
    assert retina.display_names[0] == "no diabetic retinopathy"
    assert "proliferative diabetic retinopathy" == retina.display_names[4]
    assert [("non-proliferative" in d) for d in retina.display_names] == [False, True, True, True, False]

    chest = load_bank(shipped_bank_path("chestmnist"))
    assert chest.class_names[12] == "pleural"
    assert chest.display_names[12] == "pleural thickening"
    pos, neg = chest.pairs("basic")[12]
    assert pos == ["pleural thickening"] and neg == ["no pleural thickening"]

    breast = load_bank(shipped_bank_path("breastmnist"))
    assert "malignant" in breast.display_names[0] and "benign" in breast.display_names[1]

    blood = load_bank(shipped_bank_path("bloodmnist"))
    assert blood.display_names[3] == "immature granulocyte"


PATH_VERBATIM = {
    "adipose": "a photo of large, empty-looking cells with thin cytoplasmic borders and separated by fine connective tissue.",
    "mucus": "a photo of dense, pale-staining, and somewhat amorphous material filling spaces, characteristic of mucus accumulation within the tissue.",
    "cancer-associated stroma": "a photo of disorganized, fibrous tissue with variable cellularity and irregularly spaced spindle-shaped cells, indicative of a reactive stromal response often associated with malignant tumors.",
}


def test_pathmnist_descriptive_style_is_verbatim():
    bank = load_bank(shipped_bank_path("pathmnist"))
    by_name = dict(zip(bank.class_names, bank.prompts("descriptive")))
    for name, text in PATH_VERBATIM.items():
        assert by_name[name] == [text]


def test_pneumonia_bank_has_dissertation_styles_verbatim():
    bank = load_bank(shipped_bank_path("pneumonia"), dataset="pneumoniamnist")
    flat = {p for style in bank.styles for cls in bank.prompts(style) for p in cls}
    for text in [
        "Is there pneumonia in this image?",
        "This X-ray shows signs of pneumonia.",
        "This is a normal chest X-ray",
        "a photo of chest X-ray that shows signs of a disease.",
        "a photo that is infectious.",
        "a photo of a chest X-ray showing signs of infection such as infiltrates or consolidation",
    ]:
        assert text in flat, text
    assert bank.prompts("class-names") == [["normal"], ["pneumonia"]]
    assert bank.prompts("dissertation-descriptive") == [
        ["This is a normal chest X-ray"], ["This X-ray shows signs of pneumonia."]
    ]
    assert {"templates", "medical", "radiology-report"} <= set(bank.styles)


# --------------------------------------------------------------------------- #
# Bank semantics on a small hand-written bank
# --------------------------------------------------------------------------- #
def pneumonia_doc() -> dict:
    return {
        "dataset": "pneumoniamnist",
        "version": "1",
        "description": "test bank",
        "sources": [{"id": "me", "citation": "a test"}],
        "default_style": "templates",
        "classes": {
            "0": {"name": "normal", "display": "normal lungs", "synonyms": ["clear lungs"]},
            "1": {"name": "pneumonia", "display": "pneumonia", "synonyms": []},
        },
        "styles": {
            "basic": {"fill": ["display"], "templates": ["{class}"]},
            "templates": {
                "sources": ["me"],
                "templates": ["a chest X-ray showing {class}", "an X-ray of {class}"],
            },
            "medical": {"prompts": {"0": ["clear lungs, no opacity"], "1": ["lobar consolidation"]}},
            "mixed": {
                "fill": ["name"],
                "templates": ["x-ray: {class}"],
                "prompts": {"0": ["nothing abnormal"], "1": ["airspace opacity"]},
            },
        },
    }


def chest_doc() -> dict:
    labels = INFO["chestmnist"]["label"]
    return {
        "dataset": "chestmnist",
        "version": "1",
        "default_style": "basic",
        "classes": {k: {"name": v, "display": v} for k, v in labels.items()},
        "styles": {
            "basic": {"templates": {"positive": ["{class}"], "negative": ["no {class}"]}},
            "free": {
                "prompts": {
                    k: {"positive": [f"{v} present"], "negative": [f"{v} absent"]}
                    for k, v in labels.items()
                }
            },
        },
    }


def write(tmp_path: Path, doc: dict | str, name: str = "bank.yaml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def test_prompts_fill_display_and_synonyms_in_label_order(tmp_path):
    doc = pneumonia_doc()
    doc["classes"] = dict(reversed(list(doc["classes"].items())))  # YAML order must not matter
    bank = load_bank(write(tmp_path, doc), dataset="pneumoniamnist")
    assert bank.prompts("basic") == [["normal lungs"], ["pneumonia"]]
    assert bank.prompts() == bank.prompts("templates")  # default style
    assert bank.prompts("templates") == [
        [
            "a chest X-ray showing normal lungs",
            "a chest X-ray showing clear lungs",
            "an X-ray of normal lungs",
            "an X-ray of clear lungs",
        ],
        ["a chest X-ray showing pneumonia", "an X-ray of pneumonia"],
    ]
    # templates (filled with the official name) come first, then free text
    assert bank.prompts("mixed") == [
        ["x-ray: normal", "nothing abnormal"],
        ["x-ray: pneumonia", "airspace opacity"],
    ]
    assert bank.styles == ["basic", "templates", "medical", "mixed"]
    assert bank.single_templates("templates") == {
        "templates#0": "a chest X-ray showing {class}",
        "templates#1": "an X-ray of {class}",
    }
    assert bank.prompts("templates#1") == [
        ["an X-ray of normal lungs", "an X-ray of clear lungs"],
        ["an X-ray of pneumonia"],
    ]
    assert bank.single_templates("medical") == {}
    assert bank.prompts("mixed#0") == [["x-ray: normal"], ["x-ray: pneumonia"]]
    info = bank.describe("templates")
    assert info["content_hash"] == bank.content_hash and info["prompts_per_class"] == [4, 2]


def test_unquoted_integer_keys_are_accepted(tmp_path):
    text = yaml.safe_dump(pneumonia_doc(), sort_keys=False).replace("'0':", "0:").replace("'1':", "1:")
    assert "\n  0:" in text
    bank = load_bank(write(tmp_path, text))
    assert bank.class_names == ["normal", "pneumonia"]


def test_multilabel_pairs(tmp_path):
    bank = load_bank(write(tmp_path, chest_doc()), dataset="chestmnist")
    pairs = bank.pairs("basic")
    assert len(pairs) == 14
    assert pairs[12] == (["pleural"], ["no pleural"])
    assert bank.pairs("free")[0] == (["atelectasis present"], ["atelectasis absent"])
    assert list(bank.single_templates("basic")) == ["basic#0"]
    with pytest.raises(PromptBankError, match="pairs"):
        bank.prompts("basic")


def test_pairs_on_single_label_bank_is_an_error(tmp_path):
    bank = load_bank(write(tmp_path, pneumonia_doc()))
    with pytest.raises(PromptBankError, match="single-label"):
        bank.pairs("basic")


def test_unknown_style_suggests(tmp_path):
    bank = load_bank(write(tmp_path, pneumonia_doc()))
    with pytest.raises(PromptBankError, match="Did you mean: templates"):
        bank.prompts("template")
    with pytest.raises(PromptBankError, match="has 2 template"):
        bank.prompts("templates#5")


# --------------------------------------------------------------------------- #
# Validation errors: each names the problem
# --------------------------------------------------------------------------- #
def mutate(doc_fn, fn):
    doc = copy.deepcopy(doc_fn())
    fn(doc)
    return doc


BAD_BANKS = {
    "missing class": (
        lambda d: d["classes"].pop("1"),
        r"missing class\(es\) '1' \('pneumonia'\)",
    ),
    "wrong class name": (
        lambda d: d["classes"]["1"].update(name="pneumonai"),
        r"classes\.1: name 'pneumonai' does not match the medmnist label 'pneumonia'",
    ),
    "extra class": (
        lambda d: d["classes"].update({"2": {"name": "covid", "display": "covid"}}),
        r"extra class key\(s\) '2'",
    ),
    "bad placeholder": (
        lambda d: d["styles"]["templates"]["templates"].append("a photo of {label}"),
        r"unknown placeholder \{label\}",
    ),
    "format spec in placeholder": (
        lambda d: d["styles"]["templates"]["templates"].append("a photo of {class!r}"),
        r"unknown placeholder",
    ),
    "unbalanced brace": (
        lambda d: d["styles"]["templates"]["templates"].append("a photo of {class"),
        r"malformed braces",
    ),
    "template without placeholder": (
        lambda d: d["styles"]["templates"]["templates"].append("a chest X-ray"),
        r"has no \{class\} placeholder",
    ),
    "placeholder in free text": (
        lambda d: d["styles"]["medical"]["prompts"]["1"].append("a photo of {class}"),
        r"styles\.medical\.prompts\.1: free-text prompt .* contains braces",
    ),
    "empty template list": (
        lambda d: d["styles"]["templates"].update(templates=[]),
        r"styles\.templates\.templates: empty prompt list",
    ),
    "empty class prompt list": (
        lambda d: d["styles"]["medical"]["prompts"].update({"0": []}),
        r"styles\.medical\.prompts\.0: empty prompt list",
    ),
    "empty prompt string": (
        lambda d: d["styles"]["medical"]["prompts"]["0"].append("   "),
        r"empty prompt string",
    ),
    "style missing a class": (
        lambda d: d["styles"]["medical"]["prompts"].pop("1"),
        r"styles\.medical\.prompts: missing class\(es\) '1' \('pneumonia'\)",
    ),
    "style with nothing": (
        lambda d: d["styles"].update(empty={"description": "nothing"}),
        r"styles\.empty: needs 'templates' and/or 'prompts'",
    ),
    "synonyms-only fill leaves a class empty": (
        lambda d: d["styles"].update(syn={"fill": ["synonyms"], "templates": ["{class}"]}),
        r"styles\.syn: class '1' \('pneumonia'\) gets no prompts",
    ),
    "same prompt in two classes": (
        lambda d: d["styles"]["medical"]["prompts"]["1"].append("clear lungs, no opacity"),
        r"prompt 'clear lungs, no opacity' appears under classes '0' and '1'",
    ),
    "unknown dataset flag": (
        lambda d: d.update(dataset="pnuemoniamnist"),
        r"unknown dataset 'pnuemoniamnist'\. Did you mean: pneumoniamnist",
    ),
    "unknown default style": (
        lambda d: d.update(default_style="fancy"),
        r"default_style 'fancy' is not one of the styles",
    ),
    "typo in a key": (
        lambda d: d["styles"]["basic"].update(templtes=["{class}"]),
        r"styles\.basic\.templtes: Extra inputs are not permitted",
    ),
    "missing display": (
        lambda d: d["classes"]["0"].pop("display"),
        r"classes\.0\.display: Field required",
    ),
    "unknown source id": (
        lambda d: d["styles"]["basic"].update(sources=["nobody"]),
        r"styles\.basic: unknown source 'nobody'",
    ),
    "negatives on a single-label bank": (
        lambda d: d["styles"]["basic"].update(templates={"positive": ["{class}"], "negative": ["no {class}"]}),
        r"only for multi-label",
    ),
    "number instead of text": (
        lambda d: d["styles"]["medical"]["prompts"]["0"].append(3),
        r"styles\.medical\.prompts\.0\.1: Input should be a valid string",
    ),
}


@pytest.mark.parametrize("case", list(BAD_BANKS))
def test_bad_bank_raises_named_error(tmp_path, case):
    change, pattern = BAD_BANKS[case]
    path = write(tmp_path, mutate(pneumonia_doc, change))
    with pytest.raises(PromptBankError, match=pattern) as exc:
        load_bank(path)
    msg = str(exc.value)
    assert "\n" not in msg, "errors must be one line"
    assert str(path) in msg, "errors must name the file"


BAD_MULTILABEL = {
    "templates without negatives": (
        lambda d: d["styles"]["basic"].update(templates=["{class}"]),
        r"styles\.basic\.templates: multi-label banks need 'positive' and 'negative'",
    ),
    "free text without negatives": (
        lambda d: d["styles"]["free"]["prompts"].update({"3": ["infiltration"]}),
        r"styles\.free\.prompts\.3: multi-label banks need 'positive' and 'negative'",
    ),
    "empty negatives": (
        lambda d: d["styles"]["basic"]["templates"].update(negative=[]),
        r"styles\.basic\.templates\.negative: empty prompt list",
    ),
    "negative key missing": (
        lambda d: d["styles"]["basic"]["templates"].pop("negative"),
        r"styles\.basic\.templates\.negative: Field required",
    ),
    "pleural renamed": (
        lambda d: d["classes"]["12"].update(name="pleural thickening"),
        r"classes\.12: name 'pleural thickening' does not match the medmnist label 'pleural'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MULTILABEL))
def test_bad_multilabel_bank_raises(tmp_path, case):
    change, pattern = BAD_MULTILABEL[case]
    with pytest.raises(PromptBankError, match=pattern):
        load_bank(write(tmp_path, mutate(chest_doc, change)))


def test_single_templates_need_aligned_pos_neg(tmp_path):
    doc = mutate(chest_doc, lambda d: d["styles"]["basic"]["templates"]["negative"].append("without {class}"))
    bank = load_bank(write(tmp_path, doc))  # the bank itself is fine...
    with pytest.raises(PromptBankError, match="1 positive and 2 negative"):
        bank.single_templates("basic")  # ...but per-template pairing is ambiguous


def test_wrong_dataset(tmp_path):
    path = write(tmp_path, pneumonia_doc())
    with pytest.raises(PromptBankError, match=r"is for 'pneumoniamnist', not 'chestmnist'"):
        load_bank(path, dataset="chestmnist")
    bank = load_bank(path)
    bank.check_dataset("PneumoniaMNIST")  # case-insensitive match is fine
    with pytest.raises(PromptBankError, match="not 'breastmnist'"):
        bank.check_dataset("breastmnist")
    with pytest.raises(PromptBankError, match="not 'pneumoniamnist'"):
        resolve_bank("chestmnist", "pneumoniamnist")


def test_unquoted_template_gets_a_hint(tmp_path):
    text = yaml.safe_dump(pneumonia_doc(), sort_keys=False).replace("- '{class}'", "- {class}")
    assert "- {class}" in text
    with pytest.raises(PromptBankError, match=r"styles\.basic\.templates\.0: .*quote the template"):
        load_bank(write(tmp_path, text))


def test_yaml_level_errors(tmp_path):
    with pytest.raises(PromptBankError, match="not found"):
        load_bank(tmp_path / "nope.yaml")
    with pytest.raises(PromptBankError, match=r"invalid YAML at line 2"):
        load_bank(write(tmp_path, "dataset: x\n  bad: [indent\n"))
    with pytest.raises(PromptBankError, match="must be a YAML mapping"):
        load_bank(write(tmp_path, "- a\n- b\n"))
    dup = yaml.safe_dump(pneumonia_doc(), sort_keys=False) + "dataset: chestmnist\n"
    with pytest.raises(PromptBankError, match=r"duplicate key 'dataset'"):
        load_bank(write(tmp_path, dup))


# --------------------------------------------------------------------------- #
# Content hash
# --------------------------------------------------------------------------- #
def test_content_hash_ignores_formatting_and_tracks_content(tmp_path):
    doc = pneumonia_doc()
    block = yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)
    flow = yaml.safe_dump(doc, sort_keys=True, default_flow_style=True, width=60)
    commented = "# a comment\n\n" + block.replace("\n", "   # trailing\n", 3)
    quoted = block.replace("version: '1'", 'version: "1"').replace("'0':", "0:")
    hashes = {
        load_bank(write(tmp_path, text, f"b{i}.yaml")).content_hash
        for i, text in enumerate([block, flow, commented, quoted])
    }
    assert len(hashes) == 1
    # whitespace around a prompt is stripped at parse time, so it is formatting too
    padded = mutate(pneumonia_doc, lambda d: d["styles"]["medical"]["prompts"]["1"].__setitem__(0, "  lobar consolidation "))
    assert load_bank(write(tmp_path, padded, "pad.yaml")).content_hash in hashes

    changed = mutate(pneumonia_doc, lambda d: d["styles"]["medical"]["prompts"]["1"].__setitem__(0, "lobar consolidations"))
    assert load_bank(write(tmp_path, changed, "c.yaml")).content_hash not in hashes
    renamed = mutate(pneumonia_doc, lambda d: d["classes"]["0"].update(display="healthy lungs"))
    assert load_bank(write(tmp_path, renamed, "d.yaml")).content_hash not in hashes


def test_shipped_hashes_differ_between_the_two_pneumonia_banks():
    a = load_bank(shipped_bank_path("pneumonia"))
    b = load_bank(shipped_bank_path("pneumoniamnist"))
    assert a.content_hash != b.content_hash


# --------------------------------------------------------------------------- #
# Finding banks
# --------------------------------------------------------------------------- #
def test_shipped_bank_path_is_relative_to_package():
    import fmeval

    expected = Path(fmeval.__file__).resolve().parents[1] / "prompts" / "octmnist.yaml"
    assert shipped_bank_path("OctMNIST") == expected


def test_env_dir_overrides_and_extends(tmp_path, monkeypatch):
    own = tmp_path / "banks"
    own.mkdir()
    doc = mutate(pneumonia_doc, lambda d: d.update(version="custom"))
    write(own, doc, "pneumoniamnist.yaml")
    write(own, doc, "my-pneumonia.yaml")
    monkeypatch.setenv("FMEVAL_PROMPTS_DIR", str(own))
    assert shipped_bank_path("pneumoniamnist") == own / "pneumoniamnist.yaml"
    assert resolve_bank(None, "pneumoniamnist").version == "custom"
    assert resolve_bank("my-pneumonia", "pneumoniamnist").version == "custom"
    assert "chestmnist" in list_shipped_banks()  # repo banks still found


def test_unknown_shipped_bank(tmp_path):
    with pytest.raises(PromptBankError, match="Did you mean: pneumonia"):
        shipped_bank_path("pneumonai")


def test_resolve_bank_accepts_paths(tmp_path):
    path = write(tmp_path, pneumonia_doc())
    assert isinstance(resolve_bank(path, "pneumoniamnist"), PromptBank)
    assert resolve_bank(str(path), "pneumoniamnist").name == "bank"
    assert resolve_bank(None, "retinamnist").dataset == "retinamnist"
