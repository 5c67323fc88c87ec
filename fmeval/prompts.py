"""Prompt banks: versioned, validated text prompts for zero-shot classification.

A prompt bank is a YAML file holding every prompt fmeval sends to a text tower
for one MedMNIST dataset, grouped into named *styles* (plain class names, CLIP
templates, clinical descriptions, report sentences, ...). Banks are fixed data,
never sampled at run time, so a zero-shot number is reproducible and the exact
prompts behind it are identified by :attr:`PromptBank.content_hash`.

Everything that can be wrong with a bank (unknown dataset, class keys or names
that disagree with ``medmnist.INFO``, a style that forgets a class, a ``{label}``
typo, a multi-label bank without negative prompts) is detected by
:func:`load_bank`, so the CLI can fail in milliseconds, before any model is
downloaded or loaded. The file format is documented in ``prompts/README.md``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import string
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
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
        return v.strip().lower() if isinstance(v, str) else v


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #
def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptBankError(f"prompt bank not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PromptBankError(f"cannot read prompt bank {path}: {e}") from None
    from fmeval.yaml_files import YamlRefused, load_yaml  # the one YAML reader (duplicate keys, aliases)

    try:
        return load_yaml(text)
    except YamlRefused as e:
        raise PromptBankError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PromptBankError(f"{path}: invalid YAML{where}: {problem}") from None


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


def load_bank(path: str | Path, dataset: str | None = None) -> PromptBank:
    """Read and fully validate a bank; with ``dataset``, also require it matches.

    All checks run here, not lazily, so a broken bank stops a run before any
    model weights are touched.
    """
    path = Path(path)
    data = _read_yaml(path)
    bank = PromptBank.from_dict(data, source=str(path))
    if dataset is not None:
        bank.check_dataset(dataset)
    return bank


# --------------------------------------------------------------------------- #
# Semantic validation against medmnist.INFO
# --------------------------------------------------------------------------- #
def _dataset_info(flag: str) -> dict:
    """medmnist.INFO entry of a 2D dataset, through the data layer's lookup."""
    from fmeval.data.info import _medmnist_info, dataset_info
    from fmeval.errors import DataError

    try:
        return _medmnist_info()[dataset_info(flag).flag]
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


# --------------------------------------------------------------------------- #
# Expansion: style -> concrete prompts
# --------------------------------------------------------------------------- #
def _dedupe(items: list[str]) -> list[str]:
    """Drop repeats (e.g. a synonym equal to the display name) keeping order;
    a repeated prompt would silently weigh double in every ensemble."""
    return list(dict.fromkeys(items))


def _fill_values(entry: ClassEntry, fill: list[FillField]) -> list[str]:
    values: list[str] = []
    for f in fill:
        if f == "display":
            values.append(entry.display)
        elif f == "name":
            values.append(entry.name)
        else:
            values.extend(entry.synonyms)
    return _dedupe(values)


def _fill(templates: list[str], values: list[str]) -> list[str]:
    return [t.format_map({PLACEHOLDER: v}) for t in templates for v in values]


@dataclass(frozen=True)
class _Expanded:
    """Concrete prompts of one (pseudo-)style: ``pos[c]`` and, multi-label, ``neg[c]``."""

    pos: list[list[str]]
    neg: list[list[str]] | None


# --------------------------------------------------------------------------- #
# The bank
# --------------------------------------------------------------------------- #
class PromptBank:
    """A validated prompt bank for one dataset.

    Classes are always in medmnist label-index order, so ``prompts(style)[i]``
    belongs to label ``i`` whatever order the YAML lists them in.
    """

    def __init__(self, spec: BankSpec, source: str | None = None) -> None:
        self.spec = spec
        self.source = source
        info = _dataset_info(spec.dataset)
        self.task: str = info["task"]
        self.multi_label: bool = "multi-label" in self.task
        labels: dict[str, str] = info["label"]
        _check_classes(spec, labels)
        self._keys: list[str] = sorted(labels, key=int)
        if not spec.styles:
            raise PromptBankError("styles: at least one style is required")
        if spec.default_style not in spec.styles:
            raise PromptBankError(
                f"default_style {spec.default_style!r} is not one of the styles "
                f"({', '.join(spec.styles)})"
            )
        for name, style in spec.styles.items():
            _check_style(spec, name, style, self.multi_label)
        self._expanded = {name: self._expand(name) for name in spec.styles}

    # -- construction --------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> PromptBank:
        """Validate a parsed YAML document (structure, then meaning)."""
        prefix = f"{source}: " if source else ""
        if not isinstance(data, Mapping):
            raise PromptBankError(f"{prefix}a prompt bank must be a YAML mapping")
        try:
            spec = BankSpec.model_validate(data)
        except ValidationError as e:
            raise PromptBankError(f"{prefix}{_format_validation_error(e)}") from None
        try:
            return cls(spec, source=source)
        except PromptBankError as e:
            raise PromptBankError(f"{prefix}{e}") from None

    def __repr__(self) -> str:
        return (
            f"PromptBank({self.name!r}, dataset={self.dataset!r}, version={self.version!r}, "
            f"styles={self.styles}, hash={self.content_hash[:12]})"
        )

    # -- identity ------------------------------------------------------------
    @property
    def dataset(self) -> str:
        return self.spec.dataset

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def name(self) -> str:
        """File stem for shipped banks ("pneumonia"), else the dataset flag."""
        return Path(self.source).stem if self.source else self.spec.dataset

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the parsed bank.

        Hashing the parsed content rather than the file bytes means comments,
        quoting, indentation and key order do not change it, while any change
        to a prompt, name or setting does.
        """
        canonical = json.dumps(
            self.spec.model_dump(mode="json"),
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def check_dataset(self, flag: str) -> None:
        """Raise unless this bank was written for dataset ``flag``."""
        flag = flag.strip().lower()
        if flag != self.spec.dataset:
            where = f" ({self.source})" if self.source else ""
            raise PromptBankError(
                f"prompt bank{where} is for {self.spec.dataset!r}, not {flag!r}"
            )

    # -- classes -------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self._keys)

    @property
    def class_names(self) -> list[str]:
        """Official medmnist label strings, in label-index order."""
        return [self.spec.classes[k].name for k in self._keys]

    @property
    def display_names(self) -> list[str]:
        return [self.spec.classes[k].display for k in self._keys]

    # -- styles --------------------------------------------------------------
    @property
    def styles(self) -> list[str]:
        """Style names in file order (the default style is not moved)."""
        return list(self.spec.styles)

    @property
    def default_style(self) -> str:
        return self.spec.default_style

    def style_description(self, style: str | None = None) -> str:
        base, _ = self._split_pseudo(self._style_name(style))
        return self.spec.styles[base].description

    def prompts(self, style: str | None = None) -> list[list[str]]:
        """Per-class prompt lists (label-index order) of a single-label style."""
        if self.multi_label:
            raise PromptBankError(
                f"{self.dataset} is multi-label: use pairs() for positive/negative prompts"
            )
        return [list(p) for p in self._get(style).pos]

    def pairs(self, style: str | None = None) -> list[tuple[list[str], list[str]]]:
        """Per-label (positive prompts, negative prompts) of a multi-label style."""
        if not self.multi_label:
            raise PromptBankError(
                f"{self.dataset} is single-label ({self.task}): use prompts(), not pairs()"
            )
        exp = self._get(style)
        assert exp.neg is not None
        return [(list(p), list(n)) for p, n in zip(exp.pos, exp.neg)]

    def single_templates(self, style: str | None = None) -> dict[str, str]:
        """Pseudo-styles holding one template each, for per-template comparisons.

        Returns ``{"<style>#<i>": template text}``; every key is accepted by
        :meth:`prompts` / :meth:`pairs`. A style with only free-text prompts has
        no templates and gives ``{}`` (free text is not aligned across classes).
        Multi-label templates pair ``positive[i]`` with ``negative[i]``, so they
        need equally long lists.
        """
        name = self._style_name(style)
        if PSEUDO_SEP in name:
            raise PromptBankError(f"{name!r} is already a single-template pseudo-style")
        tpl = self.spec.styles[name].templates
        if tpl is None:
            return {}
        if isinstance(tpl, PosNeg):
            if len(tpl.positive) != len(tpl.negative):
                raise PromptBankError(
                    f"styles.{name}.templates: per-template comparison pairs positive[i] "
                    f"with negative[i], but there are {len(tpl.positive)} positive and "
                    f"{len(tpl.negative)} negative templates"
                )
            return {
                f"{name}{PSEUDO_SEP}{i}": f"{p} | {n}"
                for i, (p, n) in enumerate(zip(tpl.positive, tpl.negative))
            }
        return {f"{name}{PSEUDO_SEP}{i}": t for i, t in enumerate(tpl)}

    def describe(self, style: str | None = None) -> dict[str, Any]:
        """What a report records about the prompts behind a number."""
        out: dict[str, Any] = {
            "bank": self.name,
            "path": self.source,
            "dataset": self.dataset,
            "version": self.version,
            "content_hash": self.content_hash,
            "default_style": self.default_style,
            "styles": self.styles,
        }
        if style is not None:
            exp = self._get(style)
            out["style"] = self._style_name(style)
            out["prompts_per_class"] = [len(p) for p in exp.pos]
        return out

    # -- internals -----------------------------------------------------------
    def _style_name(self, style: str | None) -> str:
        return self.spec.default_style if style is None else style

    def _split_pseudo(self, name: str) -> tuple[str, int | None]:
        base, sep, idx = name.partition(PSEUDO_SEP)
        if base not in self.spec.styles:
            close = difflib.get_close_matches(base, self.spec.styles, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise PromptBankError(
                f"unknown prompt style {base!r} in bank {self.name!r}.{hint} "
                f"Known: {', '.join(self.spec.styles)}."
            )
        if not sep:
            return base, None
        if not idx.isdigit():
            raise PromptBankError(f"bad pseudo-style {name!r}: expected '<style>#<index>'")
        return base, int(idx)

    def _get(self, style: str | None) -> _Expanded:
        name = self._style_name(style)
        base, idx = self._split_pseudo(name)
        if idx is None:
            return self._expanded[base]
        templates = self.single_templates(base)
        if name not in templates:
            raise PromptBankError(
                f"pseudo-style {name!r} does not exist: style {base!r} has "
                f"{len(templates)} template(s)"
            )
        return self._expand(base, template_index=idx)

    def _expand(self, name: str, template_index: int | None = None) -> _Expanded:
        """Concrete prompts of a style, or of one of its templates only."""
        style = self.spec.styles[name]
        entries = [self.spec.classes[k] for k in self._keys]
        pos_t, neg_t = _template_halves(style.templates)
        if template_index is not None:
            pos_t = [pos_t[template_index]]
            neg_t = [neg_t[template_index]] if neg_t else []
        use_free_text = template_index is None and style.prompts is not None

        pos: list[list[str]] = []
        neg: list[list[str]] = []
        for key, entry in zip(self._keys, entries):
            values = _fill_values(entry, style.fill)
            p, n = _fill(pos_t, values), _fill(neg_t, values)
            if use_free_text:
                extra = style.prompts[key]  # type: ignore[index]
                if isinstance(extra, PosNeg):
                    p, n = p + extra.positive, n + extra.negative
                else:
                    p = p + extra
            pos.append(_dedupe(p))
            neg.append(_dedupe(n))

        for key, entry, p, n in zip(self._keys, entries, pos, neg):
            for kind, got in (("", p), ("negative ", n if self.multi_label else p)):
                if not got:
                    raise PromptBankError(
                        f"styles.{name}: class {key!r} ({entry.name!r}) gets no {kind}"
                        f"prompts (fill={style.fill}, synonyms={entry.synonyms})"
                    )
        if not self.multi_label:
            _check_no_shared_prompts(name, self._keys, pos)
        return _Expanded(pos=pos, neg=neg if self.multi_label else None)


def _template_halves(templates: PromptList | PosNeg | None) -> tuple[list[str], list[str]]:
    if templates is None:
        return [], []
    if isinstance(templates, PosNeg):
        return list(templates.positive), list(templates.negative)
    return list(templates), []


def _check_no_shared_prompts(style: str, keys: list[str], per_class: list[list[str]]) -> None:
    """The same prompt under two classes is always a copy-paste slip: it makes
    them indistinguishable for that prompt and biases every ensemble."""
    owner: dict[str, str] = {}
    for key, prompts in zip(keys, per_class):
        for p in prompts:
            if p in owner and owner[p] != key:
                raise PromptBankError(
                    f"styles.{style}: prompt {p!r} appears under classes "
                    f"{owner[p]!r} and {key!r}"
                )
            owner[p] = key


# --------------------------------------------------------------------------- #
# Shipped banks
# --------------------------------------------------------------------------- #
def prompts_dirs() -> list[Path]:
    """Folders searched for banks: ``$FMEVAL_PROMPTS_DIR`` entries, then the shipped ones.

    The shipped folder is package data (see :mod:`fmeval.resources`), so it is
    found from any working directory, editable install or wheel alike.
    """
    from fmeval.resources import shipped_dir

    env = os.environ.get(PROMPTS_DIR_ENV, "")
    dirs = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    dirs.append(shipped_dir("prompts"))
    return dirs


def list_shipped_banks() -> dict[str, Path]:
    """Bank name (file stem) -> path; earlier folders in :func:`prompts_dirs` win."""
    from fmeval.resources import strip_yaml_suffix

    found: dict[str, Path] = {}
    for d in prompts_dirs():
        if d.is_dir():
            for p in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                found.setdefault(strip_yaml_suffix(p.name).lower(), p)
    return dict(sorted(found.items()))


def shipped_bank_path(flag: str) -> Path:
    """Path of the bank named ``flag`` (a dataset flag, or a bank name such as
    ``pneumonia`` or ``pneumonia.yaml``), searched in :func:`prompts_dirs`."""
    from fmeval.resources import strip_yaml_suffix

    name = strip_yaml_suffix(flag.strip()).lower()
    banks = list_shipped_banks()
    if name in banks:
        return banks[name]
    close = difflib.get_close_matches(name, banks, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    where = ", ".join(str(d) for d in prompts_dirs())
    raise PromptBankError(
        f"no prompt bank named {name!r} in {where}.{hint} "
        f"Known: {', '.join(banks) or 'none'}."
    )


def bank_path(spec: str | Path) -> Path:
    """The file a ``--prompts`` value means.

    A path that exists always wins (``./pneumonia.yaml`` is the user's own
    bank even though a shipped one has the same name). Otherwise a bare name,
    with or without ``.yaml``, is a shipped bank (``pneumonia``,
    ``pneumonia.yaml``), found from any directory. Anything else is an error
    that says which shipped bank was probably meant (``prompts/pneumonia.yaml``
    typed outside a checkout names the shipped ``pneumonia``).
    """
    from fmeval.resources import strip_yaml_suffix

    text = str(spec).strip()
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.exists():
        raise PromptBankError(f"prompt bank {path} is not a file")
    banks = list_shipped_banks()
    stem = strip_yaml_suffix(path.name).lower()
    bare = len(Path(text).parts) == 1 and not text.startswith(("~", "."))
    if bare and stem in banks:
        return banks[stem]
    if bare and stem == text.lower():  # a plain name, no suffix: suggest close names
        return shipped_bank_path(text)
    if stem in banks:
        hint = f"; the shipped bank of that name is --prompts {stem}"
    else:
        close = difflib.get_close_matches(stem, banks, n=3)
        hint = (f"; did you mean the shipped bank {' or '.join(close)}?" if close
                else f"; shipped banks: {', '.join(banks) or 'none'}")
    raise PromptBankError(f"prompt bank not found: {text} (no such file{hint})")


def find_bank(spec: str | Path) -> PromptBank:
    """Load a bank by path or shipped name, without a dataset to check against."""
    return load_bank(bank_path(spec))


def resolve_bank(spec: str | Path | None, dataset: str) -> PromptBank:
    """Load the bank a user asked for and check it fits ``dataset``.

    ``spec`` is a YAML path, a shipped bank name (``pneumonia`` or
    ``pneumonia.yaml``), or ``None`` for the dataset's own shipped bank; this is
    the single entry point the CLI needs (see :func:`bank_path`).
    """
    path = shipped_bank_path(dataset) if spec is None else bank_path(spec)
    return load_bank(path, dataset=dataset)


__all__ = [
    "BankSpec",
    "ClassEntry",
    "PosNeg",
    "PromptBank",
    "PROMPTS_DIR_ENV",
    "Source",
    "Style",
    "bank_path",
    "find_bank",
    "list_shipped_banks",
    "load_bank",
    "prompts_dirs",
    "resolve_bank",
    "shipped_bank_path",
]
