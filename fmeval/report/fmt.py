"""Number, CI and table formatting shared by every report view."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np


def fmt(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    try:
        return f"{float(v):.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def fmt_ci(lo: Any, hi: Any, digits: int = 4) -> str:
    try:
        lo, hi = float(lo), float(hi)
    except (TypeError, ValueError):
        return "–"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def csv_num(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    try:
        return repr(round(float(v), 6))
    except (TypeError, ValueError):
        return str(v)


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
