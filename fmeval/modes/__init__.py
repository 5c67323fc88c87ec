"""Evaluation modes. Each registers a runner ``(config) -> RunResult`` in MODES."""

from fmeval.modes.base import MODES  # noqa: F401


def load_modes() -> None:
    """Import every mode module so that it registers itself."""
    import importlib

    for name in ("knn", "linprobe", "zeroshot", "prompt_compare", "finetune"):
        try:
            importlib.import_module(f"fmeval.modes.{name}")
        except ModuleNotFoundError as exc:  # a mode still being written
            if exc.name != f"fmeval.modes.{name}":
                raise
