"""Reading the user's YAML files (protocols, studies): one line per failure, naming the file.

Both kinds fail the same ways (missing, unreadable, not UTF-8, not YAML, not a
mapping, a field pydantic rejects), so they share the wording; each passes
its own error class so the CLI maps it to exit 2.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError


def read_mapping(path: Path, what: str, error: type[Exception], shape: str) -> dict:
    """The top-level mapping of a YAML file; ``what`` names the kind ("protocol", "study file")."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} not found.") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}.") from None
    except UnicodeDecodeError:
        raise error(f"cannot read {what} {path}: not UTF-8 text.") from None
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise error(f"{what} {path} must be a mapping {shape}.")
    return data


def first_error(err: ValidationError) -> str:
    """Pydantic's report cut to its first problem: 'where: what'."""
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "file"
    return f"{where}: {e['msg']}"
