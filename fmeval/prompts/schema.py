"""A prompt bank's schema: the YAML structure (pydantic) and its meaning checked against the dataset.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Tag,
    ValidationError,
    field_validator,
)

from fmeval.errors import PromptBankError

#: Environment variable naming extra folders (``os.pathsep``-separated) searched
#: for banks before the repository's own ``prompts/`` folder.
PROMPTS_DIR_ENV = "FMEVAL_PROMPTS_DIR"

#: The only placeholder templates may use; it is filled with the class's display
#: name and synonyms (or its official name, see ``Style.fill``).
PLACEHOLDER = "class"

#: Separates a style from a template index in pseudo-style names ("templates#2").
PSEUDO_SEP = "#"

_STYLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")

FillField = Literal["display", "synonyms", "name"]
PromptList = list[str]


# --------------------------------------------------------------------------- #
# Schema (structure only; meaning is checked against medmnist.INFO afterwards)
# --------------------------------------------------------------------------- #
class _Strict(BaseModel):
    """Base for bank models: unknown keys are errors so typos cannot hide."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _str_keys(value: Any) -> Any:
    """YAML reads an unquoted ``0:`` as an int; class keys are strings."""
    if isinstance(value, Mapping):
        return {
            (str(k) if isinstance(k, int) and not isinstance(k, bool) else k): v
            for k, v in value.items()
        }
    return value


class Source(_Strict):
    """Where prompts came from (a paper, a dataset description, fmeval itself)."""

    id: str
    citation: str
    url: str | None = None


class ClassEntry(_Strict):
    """One dataset class: official medmnist name plus prompt-friendly wording."""

    name: str
    display: str
    synonyms: list[str] = []


class PosNeg(_Strict):
    """Positive and negative prompts for one multi-label finding (CheXzero)."""

    positive: PromptList
    negative: PromptList


def _prompt_shape(value: Any) -> str:
    """Pick the union branch by shape, so errors come from one branch only."""
    return "<pos-neg>" if isinstance(value, (Mapping, PosNeg)) else "<list>"


#: A plain prompt list (single-label) or a positive/negative pair (multi-label);
#: which one a task needs is checked later, against medmnist.INFO.
Prompts = Annotated[
    Union[Annotated[PromptList, Tag("<list>")], Annotated[PosNeg, Tag("<pos-neg>")]],
    Discriminator(_prompt_shape),
]


class Style(_Strict):
    """One way of phrasing prompts.

    ``templates`` contain ``{class}`` and are filled with every value named in
    ``fill`` for each class; ``prompts`` are class-specific free text (CuPL
    style) used verbatim. A style may have either or both. For multi-label banks
    both take ``positive``/``negative`` halves.
    """

    description: str = ""
    sources: list[str] = []
    fill: list[FillField] = ["display", "synonyms"]
    templates: Prompts | None = None
    prompts: dict[str, Prompts] | None = None

    _keys = field_validator("prompts", mode="before")(_str_keys)


class BankSpec(_Strict):
    """The parsed YAML document; its canonical JSON is what gets hashed."""

    dataset: str
    version: str
    description: str = ""
    sources: list[Source] = []
    default_style: str
    classes: dict[str, ClassEntry]
    styles: dict[str, Style]

    _keys = field_validator("classes", mode="before")(_str_keys)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        # `version: 1.0` is a float to YAML; keep it as the text the author meant.
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("dataset", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        # a MedMNIST name in lower case; a user dataset's path (fmeval prompts init) as written
        return v.strip().lower() if isinstance(v, str) and "/" not in v else v


# --------------------------------------------------------------------------- #
# Semantic validation against medmnist.INFO
# --------------------------------------------------------------------------- #
def _dataset_info(flag: str) -> dict:
    """medmnist.INFO entry of a 2D dataset, or a user dataset's card, through the data layer."""
    from fmeval.data.sources import label_table
    from fmeval.errors import DataError

    try:
        return label_table(flag)
    except DataError as exc:
        raise PromptBankError(str(exc)) from None


def _fmt_keys(keys: list[str], labels: Mapping[str, str] | None = None) -> str:
    keys = sorted(keys, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    if labels is None:
        return ", ".join(repr(k) for k in keys)
    return ", ".join(f"{k!r} ({labels[k]!r})" for k in keys)


def _check_classes(spec: BankSpec, labels: Mapping[str, str]) -> None:
    missing = [k for k in labels if k not in spec.classes]
    extra = [k for k in spec.classes if k not in labels]
    if missing:
        raise PromptBankError(
            f"classes: missing class(es) {_fmt_keys(missing, labels)} of {spec.dataset}"
        )
    if extra:
        raise PromptBankError(
            f"classes: extra class key(s) {_fmt_keys(extra)} not in {spec.dataset} "
            f"(labels are {_fmt_keys(list(labels))})"
        )
    for key, entry in spec.classes.items():
        if entry.name != labels[key]:
            raise PromptBankError(
                f"classes.{key}: name {entry.name!r} does not match the medmnist label "
                f"{labels[key]!r} of {spec.dataset}"
            )
        if not entry.display:
            raise PromptBankError(f"classes.{key}: empty display name")
        if any(not s for s in entry.synonyms):
            raise PromptBankError(f"classes.{key}: empty synonym")


def _placeholders(where: str, text: str) -> list[str]:
    """Every ``{...}`` in ``text`` as written (with any !conversion / :spec)."""
    try:
        return [
            field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "")
            for _, field, spec, conv in string.Formatter().parse(text)
            if field is not None
        ]
    except ValueError as e:  # unbalanced braces
        raise PromptBankError(f"{where}: malformed braces in {text!r}: {e}") from None


def _check_template(where: str, template: str) -> None:
    fields = _placeholders(where, template)
    bad = [f for f in fields if f != PLACEHOLDER]
    if bad:
        raise PromptBankError(
            f"{where}: unknown placeholder {{{bad[0]}}} in template {template!r}; "
            f"only {{{PLACEHOLDER}}} is allowed"
        )
    if not fields:
        raise PromptBankError(
            f"{where}: template {template!r} has no {{{PLACEHOLDER}}} placeholder, so it "
            "would give every class the same prompt (put free text under 'prompts')"
        )


def _check_free_text(where: str, text: str) -> None:
    if "{" in text or "}" in text:
        raise PromptBankError(
            f"{where}: free-text prompt {text!r} contains braces; free-text prompts are "
            "used verbatim (templates with {class} belong under 'templates')"
        )


def _check_nonempty(where: str, items: list[str]) -> None:
    if not items:
        raise PromptBankError(f"{where}: empty prompt list")
    for t in items:
        if not t:
            raise PromptBankError(f"{where}: empty prompt string")


def _check_style(spec: BankSpec, name: str, style: Style, multi_label: bool) -> None:
    where = f"styles.{name}"
    if not _STYLE_NAME.match(name):
        raise PromptBankError(
            f"{where}: style names must be lower-case letters, digits, '-', '_' or '.'"
        )
    if style.templates is None and style.prompts is None:
        raise PromptBankError(f"{where}: needs 'templates' and/or 'prompts'")
    if not style.fill:
        raise PromptBankError(f"{where}: 'fill' is empty")
    known_sources = {s.id for s in spec.sources}
    for sid in style.sources:
        if sid not in known_sources:
            raise PromptBankError(f"{where}: unknown source {sid!r} (not in 'sources')")

    if style.templates is not None:
        halves = _halves(f"{where}.templates", style.templates, multi_label)
        for half_where, items in halves:
            _check_nonempty(half_where, items)
            for t in items:
                _check_template(half_where, t)

    if style.prompts is not None:
        missing = [k for k in spec.classes if k not in style.prompts]
        extra = [k for k in style.prompts if k not in spec.classes]
        if missing:
            labels = {k: spec.classes[k].name for k in spec.classes}
            raise PromptBankError(
                f"{where}.prompts: missing class(es) {_fmt_keys(missing, labels)}"
            )
        if extra:
            raise PromptBankError(f"{where}.prompts: extra class key(s) {_fmt_keys(extra)}")
        for key, value in style.prompts.items():
            for half_where, items in _halves(f"{where}.prompts.{key}", value, multi_label):
                _check_nonempty(half_where, items)
                for t in items:
                    _check_free_text(half_where, t)


def _halves(
    where: str, value: PromptList | PosNeg, multi_label: bool
) -> list[tuple[str, list[str]]]:
    """Split a prompt value into its checked parts, enforcing the task's shape."""
    if multi_label:
        if not isinstance(value, PosNeg):
            raise PromptBankError(
                f"{where}: multi-label banks need 'positive' and 'negative' prompts "
                "(negatives are missing)"
            )
        return [(f"{where}.positive", value.positive), (f"{where}.negative", value.negative)]
    if isinstance(value, PosNeg):
        raise PromptBankError(
            f"{where}: positive/negative prompts are only for multi-label datasets; "
            "give a plain list"
        )
    return [(where, value)]


def _format_validation_error(err: ValidationError) -> str:
    """Pydantic's multi-line report -> 'loc: message; loc: message' on one line."""
    parts = []
    for e in err.errors()[:3]:
        # drop union-branch tags ("<list>", "<pos-neg>") from the location
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith("<")) or "<top level>"
        hint = ""
        if e["type"] == "string_type" and isinstance(e.get("input"), dict):
            hint = " (YAML reads an unquoted {class} as a mapping: quote the template)"
        parts.append(f"{loc}: {e['msg']}{hint}")
    more = err.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
