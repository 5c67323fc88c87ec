"""The comparison page's figure: per-dataset values of two submissions (line plot) and their
spread across datasets (box plot), as a PNG data URI (no files, no JavaScript)."""

from __future__ import annotations

import base64
import io


def comparison_png(cmp: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in cmp["rows"] if r["a"] is not None and r["b"] is not None]
    names = [r["dataset"].replace("mnist", "") for r in rows]
    a, b = [r["a"] for r in rows], [r["b"] for r in rows]
    la, lb = f"A: #{cmp['a']['id']} {cmp['a']['model']}"[:40], f"B: #{cmp['b']['id']} {cmp['b']['model']}"[:40]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    ax1.plot(names, a, "o-", label=la)
    ax1.plot(names, b, "s--", label=lb)
    ax1.set_ylabel(cmp["metric"])
    ax1.tick_params(axis="x", rotation=30)
    ax1.legend(fontsize=7)
    if a:
        ax2.boxplot([a, b])
        ax2.set_xticks([1, 2], ["A", "B"])
    ax2.set_title("across datasets", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
