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

- :mod:`~fmeval.prompts.schema` - the YAML structure and its meaning checked against the dataset
- :mod:`~fmeval.prompts.bank` - :class:`PromptBank`: a validated bank, rendering styles into prompts
- :mod:`~fmeval.prompts.loading` - strict YAML reading, shipped banks, the search path
"""

from fmeval.prompts.schema import (  # noqa: F401
    PLACEHOLDER,
    PROMPTS_DIR_ENV,
    PSEUDO_SEP,
    BankSpec,
    ClassEntry,
    PosNeg,
    Source,
    Style,
)
from fmeval.prompts.bank import PromptBank  # noqa: F401
from fmeval.prompts.loading import (  # noqa: F401
    bank_path,
    find_bank,
    list_shipped_banks,
    load_bank,
    prompts_dirs,
    resolve_bank,
    shipped_bank_path,
)

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
