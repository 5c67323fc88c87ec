"""Device choice and numeric precision, decided once per run.

``precision`` is a run setting like any other: the precision actually used is
recorded in the cache key and the report, because bf16 and fp32 features are
not the same numbers. The policy that resolves ``auto`` lives here.
"""

from __future__ import annotations

import contextlib

import torch

from fmeval.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def check_device_name(name: str) -> torch.device | None:
    """The device a name means (``None`` for auto), without asking the hardware.

    Checked when the config is made, before any work; whether a CUDA GPU is
    present is asked only when the run starts (a study is planned on a login
    node without one).
    """
    if name == "auto":
        return None
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N, not {name!r}.")
    return dev


def resolve_device(name: str = "auto") -> torch.device:
    dev = check_device_name(name)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available.")
    return dev


def resolve_precision(name: str, device: torch.device, family: str = "generic") -> str:
    """``auto`` | ``fp32`` | ``bf16`` -> the precision a run uses (``fp32`` or ``bf16``)."""
    if name not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, not {name!r}.")
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" else "fp32"


def autocast(device: torch.device, precision: str | None = None):
    """bf16 autocast when ``precision`` is bf16 (``None``: bf16 on CUDA only)."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def use_channels_last(family: str, device: torch.device, precision: str) -> bool:
    """Channels-last memory format where it helps (CNN-like models under bf16, GPU)."""
    return device.type == "cuda" or (precision == "bf16" and family in ("cnn", "medvit"))


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
