"""The test labels the server holds: read once at start from its own MedMNIST files.

Labels never come from an upload. At start every configured (dataset, size)
file is opened through fmeval's data layer, its MD5 compared with the official
one (``medmnist.INFO``) and the result shown on every page; ``md5="strict"``
refuses to start on a file that differs. A configured size with no file is
closed to submissions, and the start-up line says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fmeval.data import load_dataset
from fmeval.errors import DataError


@dataclass(frozen=True, eq=False)
class HeldLabels:
    flag: str
    size: int
    task: str
    class_names: list[str]
    labels: np.ndarray  # int64 [N, width]
    md5: str
    md5_official: bool | None


class LabelStore:
    """Test labels by (dataset, size); ``datasets`` is the list a complete submission covers."""

    def __init__(self, datasets: list[str], sizes: list[int], root=None, md5: str = "warn") -> None:
        self.datasets = list(datasets)
        self.sizes: list[int] = []
        self.missing: list[str] = []
        self._held: dict[tuple[str, int], HeldLabels] = {}
        for size in sizes:
            held = {}
            for flag in self.datasets:
                try:
                    data = load_dataset(flag, size, root, md5=md5)
                except DataError as exc:
                    if "not found" not in str(exc):
                        raise
                    self.missing.append(f"{flag}@{size}")
                    continue
                held[flag] = HeldLabels(flag, size, data.task, list(data.info.labels), data.labels("test"),
                                        data.md5, data.md5_verified)
            if len(held) == len(self.datasets):
                self.sizes.append(size)
                self._held.update({(f, size): h for f, h in held.items()})
        if not self.sizes:
            raise DataError(f"no size has the test files of every configured dataset ({', '.join(self.missing)} "
                            "missing); point --data-root (FMEVAL_DATA_ROOT) at the MedMNIST files.")

    def get(self, flag: str, size: int) -> HeldLabels:
        return self._held[(flag, size)]

    def describe(self) -> list[dict]:
        return [{"dataset": h.flag, "size": h.size, "task": h.task, "n_test": int(len(h.labels)),
                 "md5": h.md5, "md5_official": h.md5_official} for h in self._held.values()]
