"""A validated prompt bank, and rendering its styles into concrete prompts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from pydantic import ValidationError

from fmeval.errors import PromptBankError
from fmeval.prompts.schema import (
    PLACEHOLDER,
    PSEUDO_SEP,
    BankSpec,
    ClassEntry,
    FillField,
    PosNeg,
    PromptList,
    _check_classes,
    _check_style,
    _dataset_info,
    _format_validation_error,
)


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
        from fmeval.data.sources import bank_key  # a name in lower case, a path resolved

        flag = bank_key(flag)
        if flag != bank_key(self.spec.dataset):
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

    def style_groups(self, style: str | None = None) -> list:
        """A style's prompts as the text tower encodes them: per class, or (for a
        multi-label bank) per label the (positive, negative) pair."""
        return self.pairs(style) if self.multi_label else self.prompts(style)

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


