"""The numeric environment variables the harness reads, checked in one place.

The CLI checks them all before any command starts (one line naming the variable, exit 2,
nothing written); the modules that use them read them through :func:`number`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .errors import UserError

PROGRESS_EVERY = "REPRODUCE_PROGRESS_EVERY"  # seconds between the matrix's live lines; 0 = off
PEAK_TFLOPS = "REPRODUCE_PEAK_TFLOPS"  # the device's peak for MFU, e.g. for a CPU

# name -> (what the value must be, whether 0 is allowed, the least and the most it may be
# when not 0: a live line every nanosecond is a flood, one every 1e308 s overflows a sleep)
NUMBERS: dict[str, tuple[str, bool, float, float]] = {
    PROGRESS_EVERY: ("0 (the live lines off) or seconds from 0.1 to 86400", True, 0.1, 86400.0),
    PEAK_TFLOPS: ("the device's peak TFLOP/s, a number > 0 and at most 1e6", False, 0.0, 1e6),
}


def number(name: str) -> float | None:
    """The variable's value, or None when it is unset or empty; UserError when it is not a
    finite number in range."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    what, zero_ok, least, most = NUMBERS[name]
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if value == 0 and zero_ok:
        return value
    if not (least <= value <= most) or value == 0:  # nan fails the range
        raise UserError(f"${name}: expected {what}, got {raw!r}")
    return value


def check_all() -> None:
    """Raise UserError for the first variable that is set to something unusable."""
    for name in NUMBERS:
        number(name)
    from . import faults

    bad = faults.problem()
    if bad:
        raise UserError(f"${faults.ENV}: {bad}")


def user_cache(*parts: str) -> Path:
    """The harness's folder in the user's cache directory (``$XDG_CACHE_HOME`` or
    ``~/.cache``, then ``wgan-gp-reproduce``), joined with ``parts``: the demo judge and the
    image caches' verification stamps live there."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("wgan-gp-reproduce", *parts)
