"""Device choice and the precision policy, decided once.

Precision is a run setting (``--precision auto|fp32|bf16``) resolved to what
actually runs, ``"fp32"`` or ``"bf16"``, before anything is computed: the
resolved value is part of the feature cache key and of the report, so features
of different precision never share a cache entry.

``auto`` means bf16 autocast where the hardware does bf16 matrix products
natively (CUDA GPUs; CPUs that report AMX-BF16 or AVX-512-BF16), fp32
elsewhere: without native support CPU bf16 is *emulated* and several times
slower than fp32 (on the 2-core AVX-512 host of this repo a bf16 GEMM runs at
~16 GFLOP/s against ~125 GFLOP/s in fp32). Even on capable hardware ``auto``
keeps fp32 for an adapter family whose measured bf16 fidelity failed (bf16
features moved a kNN / linear-probe / zero-shot metric outside its bootstrap
CI): see ``benchmarks/fidelity.py``. On a CPU, bf16 is also only picked for
families that were measured and passed; on CUDA an unmeasured family keeps the
historical bf16 default. Native is not always faster, though: a tower measured
slower in bf16 than in fp32 on a kind of device (a slow path under autocast)
keeps fp32 there (``bf16_speed``, from ``benchmarks/channels_last.py``).

Channels-last memory format is decided per adapter family and per
(device type, precision) from forward-pass measurements
(``benchmarks/channels_last.py``), never by rule of thumb: it makes CNNs much
faster under oneDNN/cuDNN bf16 and does nothing (or harm) for ViTs in fp32.

Both tables live in ``precision_policy.json`` next to this module and are
written by those benchmark scripts (``--write-policy``), with the numbers
behind every decision.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any

import torch

from fmeval.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")
RESOLVED_PRECISIONS = ("fp32", "bf16")
# CPU flags (as /proc/cpuinfo spells them) that mean native bf16 matrix products
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
POLICY_FILE = Path(__file__).with_name("precision_policy.json")
CPUINFO = Path("/proc/cpuinfo")


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


# -- CPU capability ---------------------------------------------------------------


def cpu_flags(path: Path | str = CPUINFO) -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (empty off Linux)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_bf16_capable(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU multiplies bf16 natively (AMX-BF16 or AVX-512-BF16).

    Read from the CPU flags, not from a timing, so the decision is the same on a
    busy and an idle machine; ``flags`` overrides them (tests).
    """
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in BF16_CPU_FLAGS)


# -- the measured policy table ------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_policy(path: Path | str = POLICY_FILE) -> dict[str, Any]:
    """The measured policy table (``{"families": {family: {...}}, ...}``)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"families": {}}


def family_policy(family: str) -> dict[str, Any]:
    return load_policy().get("families", {}).get(family, {})


def bf16_fidelity(family: str) -> bool | None:
    """The measured bf16 fidelity verdict of ``family``: True (passed with tiny *and*
    full-size weights), False (bf16 moved a metric outside its bootstrap CI or the
    features' cosine fell below the threshold, at any size) or None (never
    measured, or measured only at tiny size: not enough to trust CPU bf16)."""
    fid = family_policy(family).get("bf16_fidelity")
    if fid is None:
        return None
    if not fid.get("ok", False):
        return False
    return True if "full" in fid.get("sizes", ()) else None


def bf16_faster(family: str, device: torch.device | str) -> bool:
    """Whether bf16 autocast runs ``family`` faster than fp32 on this kind of device.

    Measured by ``benchmarks/channels_last.py`` on hardware with native bf16 (each
    precision in its own best layout); where it was not measured, bf16 is taken
    to be faster, which native bf16 GEMMs make true for most towers. A tower
    whose bf16 was measurably slower gets fp32 from ``auto``.
    """
    entry = family_policy(family).get("bf16_speed", {}).get(torch.device(device).type)
    return True if entry is None else bool(entry["use"])


def bf16_fidelity_ok(family: str) -> bool:
    """Whether bf16 features of ``family`` passed the measured fidelity check
    (a family that was never measured does not pass)."""
    return bool(bf16_fidelity(family))


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` does bf16 matrix products natively (fast)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and cpu_bf16_capable()


def resolve_precision(name: str, device: torch.device | str, family: str | None) -> str:
    """``auto|fp32|bf16`` -> the precision that runs: ``"fp32"`` or ``"bf16"``.

    ``auto``: fp32 without native bf16 and for an adapter ``family`` whose
    measured bf16 fidelity failed. A family never measured keeps the historical
    default: bf16 on CUDA, fp32 on a bf16-capable CPU (CPU bf16 is new and only
    trusted where code has shown it leaves the metrics inside their bootstrap
    CIs). A measured pass means bf16 on CUDA and on bf16-capable CPUs, unless
    bf16 was measured slower than fp32 for the family on that kind of device.
    ``family=None`` is for computations on features rather than an encoder (the
    linear probe's GEMMs, whose bf16 accuracy is tested on its own): no
    fidelity gate. An explicit ``fp32``/``bf16`` is honoured as asked.
    """
    key = str(name).lower()
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}.")
    if key != "auto":
        return key
    device = torch.device(device)
    if not native_bf16(device):
        return "fp32"
    verdict = True if family is None else bf16_fidelity(family)
    if verdict is None:  # never measured
        verdict = device.type == "cuda"
    if verdict and family is not None and not bf16_faster(family, device):
        verdict = False  # faithful, but measured slower than fp32 here
    return "bf16" if verdict else "fp32"


def precision_rule(name: str, device: torch.device | str, family: str | None) -> str:
    """Which rule of :func:`resolve_precision` decided, in words (recorded in reports, so a
    model given by spec shows it got the conservative default of an unmeasured family)."""
    key = str(name).lower()
    if key != "auto":
        return f"explicit --precision {key}"
    device = torch.device(device)
    if not native_bf16(device):
        return f"auto: fp32, no native bf16 on this {device.type}"
    verdict = True if family is None else bf16_fidelity(family)
    if verdict is None:
        return (f"auto: family {family!r} never measured, conservative default "
                f"({'bf16 on CUDA' if device.type == 'cuda' else 'fp32 on CPU'})")
    if not verdict:
        return f"auto: fp32, family {family!r} failed its measured bf16 fidelity"
    if family is not None and not bf16_faster(family, device):
        return f"auto: fp32, bf16 measured slower than fp32 for family {family!r} on {device.type}"
    return f"auto: bf16, family {family!r} measured faithful and faster"


def _check_resolved(precision: str) -> str:
    if precision not in RESOLVED_PRECISIONS:
        raise ConfigError(
            f"precision {precision!r} must be resolved first (resolve_precision) to fp32 or bf16."
        )
    return precision


def autocast(device: torch.device, precision: str | None = None):
    """The autocast context for ``precision`` on ``device``.

    ``precision=None`` keeps the historical behaviour (bf16 autocast on CUDA, a
    no-op on CPU) for callers not yet wired to the policy. ``"bf16"``: bf16
    autocast on CPU and CUDA alike. ``"fp32"``: autocast explicitly disabled, so
    an enclosing autocast cannot lower it.
    """
    device = torch.device(device)
    if precision is None:
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if _check_resolved(precision) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def policy_key(device: torch.device | str, precision: str) -> str:
    """Column of the channels-last table: ``cpu-fp32``, ``cpu-bf16``, ``cuda-bf16``, ..."""
    return f"{torch.device(device).type}-{_check_resolved(precision)}"


def use_channels_last(family: str, device: torch.device | str, precision: str) -> bool:
    """Whether ``family`` runs faster in channels-last on ``device`` at ``precision``.

    From the measured table; where there is no measurement for this
    (family, device, precision) the historical default holds: channels-last on
    CUDA, contiguous on CPU.
    """
    key = policy_key(device, precision)
    entry = family_policy(family).get("channels_last", {}).get(key)
    if entry is None:
        return torch.device(device).type == "cuda"
    return bool(entry["use"])


def prepare_module(module: torch.nn.Module, family: str, device: torch.device | str,
                   precision: str) -> torch.nn.Module:
    """Move ``module`` to ``device`` in the memory format the policy picks (in place)."""
    device = torch.device(device)
    fmt = torch.channels_last if use_channels_last(family, device, precision) else torch.contiguous_format
    return module.to(device=device, memory_format=fmt)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
