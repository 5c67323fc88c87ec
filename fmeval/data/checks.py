"""Checks of a user dataset, run before any model is built; one line per finding.

Errors stop the run (nothing is cached or written): an unreadable or truncated
image, an empty class folder, a label that is not a class, and, with
``--strict-leakage``, identical images in two splits. Warnings are kept in the
dataset's ``warnings`` (so in every report): a file whose content is another
format than its name says, a class seen in train but not in test, 16-bit
images or mixed grey/colour converted by the stated rule, and leakage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fmeval.data.decode import Decoded, format_mismatch
from fmeval.data.info import SPLITS

MAX_LINES = 20  # per kind of error; the rest are counted


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duplicates: int = 0  # images in val/test identical to one in an earlier split

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict:
        return {"errors": list(self.errors), "warnings": list(self.warnings), "cross_split_duplicates": self.duplicates}


def capped(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f"... and {len(lines) - MAX_LINES} more like these."]


def _examples(names: list[str], n: int = 3) -> str:
    more = f", +{len(names) - n} more" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def check_pixels(where: list[str], decoded: list[Decoded]) -> tuple[list[str], list[str], int]:
    """(errors, warnings, channels): unreadable files, format mismatches, conversions."""
    errors = capped([f"{where[i]}: unreadable image ({d.error})." for i, d in enumerate(decoded) if d.error])
    warnings: list[str] = []
    mism = [(where[i], m) for i, d in enumerate(decoded) if not d.error and (m := format_mismatch(where[i], d.fmt))]
    warnings += capped([f"{w}: {m} (decoded by its content)." for w, m in mism])
    ok = [(where[i], d) for i, d in enumerate(decoded) if not d.error]
    sixteen = [w for w, d in ok if d.bits == 16]
    if sixteen:
        warnings.append(f"{len(sixteen)} 16-bit image(s) converted to 8 bits by round(x/257) over the full "
                        f"0..65535 range: {_examples(sixteen)}.")
    grey = [w for w, d in ok if d.channels == 1]
    colour = [w for w, d in ok if d.channels == 3]
    channels = 3 if colour else 1
    if grey and colour:
        few = grey if len(grey) <= len(colour) else colour
        warnings.append(f"mixed channel counts: {len(grey)} grey and {len(colour)} colour image(s) "
                        f"(e.g. {_examples(few)}); all converted to RGB, grey repeated to 3 channels.")
    return errors, warnings, channels


def check_classes(labels: dict[str, np.ndarray], classes: tuple[str, ...], multilabel: bool) -> list[str]:
    """Warnings: a class present in train but absent in test (its test metrics are undefined)."""
    def present(y: np.ndarray) -> set[int]:
        if multilabel:
            return set(np.flatnonzero(y.sum(axis=0) > 0).tolist())
        return set(np.unique(y[:, 0]).tolist())

    train, test = present(labels["train"]), present(labels["test"])
    return [f"class {classes[c]!r} is in train but absent in test." for c in sorted(train - test)]


def check_leakage(hashes: dict[str, list[str]], names: dict[str, list[str]]) -> tuple[int, str | None]:
    """Images in val or test pixel-identical to an image of an earlier split: (count, one line)."""
    seen: dict[str, str] = {}
    count, examples, per = 0, [], {}
    for split in SPLITS:
        later: dict[str, str] = {}
        for h, name in zip(hashes[split], names[split]):
            if h in seen:
                count += 1
                per[split] = per.get(split, 0) + 1
                if len(examples) < 3:
                    examples.append(f"{name} = {seen[h]}")
            later.setdefault(h, name)
        for h, name in later.items():
            seen.setdefault(h, name)
    if not count:
        return 0, None
    where = ", ".join(f"{n} in {s}" for s, n in per.items())
    return count, (f"leakage: {count} image(s) pixel-identical to an image of an earlier split ({where}; "
                   f"e.g. {'; '.join(examples)}).")
