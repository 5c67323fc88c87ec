"""Reading banks: strict YAML (no duplicate keys), the shipped banks and the search path.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml

from fmeval.errors import PromptBankError
from fmeval.prompts.bank import PromptBank
from fmeval.prompts.schema import PROMPTS_DIR_ENV


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
# Shipped banks
# --------------------------------------------------------------------------- #
def prompts_dirs() -> list[Path]:
    """Folders searched for banks: ``$FMEVAL_PROMPTS_DIR`` entries, then the shipped ones.

    The shipped folder is package data (see :mod:`fmeval.resources`), so it is
    found from any working directory, editable install or wheel alike.
    """
    from fmeval.resources import shipped_dir

    from fmeval.settings import env

    dirs = [Path(p).expanduser() for p in (env(PROMPTS_DIR_ENV) or "").split(os.pathsep) if p]
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
    from fmeval.data.sources import default_bank  # a user dataset's own bank (fmeval prompts init)

    own = default_bank(dataset) if spec is None else None
    path = own if own is not None and own.exists() else shipped_bank_path(dataset) if spec is None else bank_path(spec)
    return load_bank(path, dataset=dataset)


