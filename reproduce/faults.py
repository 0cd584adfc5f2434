"""Fault injection for the reliability tests (RELIABILITY.md), driven by one environment
variable so that the tests exercise the real ``python -m reproduce`` processes unchanged.

``REPRODUCE_FAULTS`` is a comma-separated list of:

    nan@K            make the critic loss of generator iteration K NaN (divergence handling)
    ckpt-stall@K     while writing checkpoint K, write half of state.pt, then hang (the test
                     SIGKILLs the process mid-write)
    ckpt-enospc@K    while writing checkpoint K, fail with ENOSPC (disk full)
    skip-restore=X   on resume, do not restore X (rng | data | optimizer): proves that the
                     bit-exact resume test can fail
    step-sleep=S     sleep S seconds after every generator iteration (slows a tiny run down
                     so that tests can interrupt it)
    pause@K          after committing checkpoint K, stop the process (SIGSTOP) until a
                     SIGCONT: the test changes the world (fills the disk) at a known point
    hold@K           before generator iteration K, wait until a stop is requested (the stop
                     then lands exactly at the end of iteration K: a test's signal cannot
                     arrive too early or too late, however loaded the machine)
    critic-sleep=S   sleep S seconds after every critic step (a long iteration: the stop
                     flag is read between critic steps)
    eval-sleep=S     sleep S seconds before the final evaluation (a cell that completes
                     while the matrix stops: its outcome must still be announced)
    stop-grace=S     abandon an iteration S seconds after a stop request (default 30)
    submit-sleep=S   sleep S seconds right after the local executor submits a cell (while
                     SIGINT is held back: the Ctrl-C test sends it then)
    prepare-sleep=S  sleep S seconds after every image in prepare-data (the same, for the
                     preparation's workers)
    gpu-check-hang=S make gpu-check's section S hang (the time-box test)
    oom@K            raise torch.OutOfMemoryError in generator iteration K (K = build: while
                     the trainer is built, before the loop): how a run records running out of
                     device memory
    fake-gpus        let --gpus name GPUs on a machine without CUDA (the cells run on the
                     CPU, scheduled as if on those GPUs): the local executor's GPU scheduling,
                     packing and CUDA_VISIBLE_DEVICES tests on CPU-only machines

Unset in normal use; every check is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "REPRODUCE_FAULTS"
_cache: tuple[str, dict[str, set[str]]] | None = None


def _parsed() -> dict[str, set[str]]:
    global _cache
    raw = os.environ.get(ENV, "")
    if _cache is None or _cache[0] != raw:
        spec: dict[str, set[str]] = {}
        for item in filter(None, (s.strip() for s in raw.split(","))):
            for sep in ("@", "="):
                if sep in item:
                    name, value = item.split(sep, 1)
                    spec.setdefault(name, set()).add(value)
                    break
            else:
                spec.setdefault(item, set()).add("")
        _cache = (raw, spec)
    return _cache[1]


# each fault: how its values read ("int": an iteration, "seconds", a word, or no value)
KINDS = {"nan": "int", "ckpt-stall": "int", "ckpt-enospc": "int", "skip-restore": "word",
         "step-sleep": "seconds", "pause": "int", "hold": "int", "critic-sleep": "seconds",
         "eval-sleep": "seconds", "stop-grace": "seconds", "submit-sleep": "seconds",
         "prepare-sleep": "seconds", "gpu-check-hang": "word", "oom": "int-or-build",
         "fake-gpus": "none"}  # fmt: skip


def problem() -> str | None:
    """What is wrong with ``$REPRODUCE_FAULTS`` (an unknown fault, a value of the wrong
    kind), in a phrase, or None: checked before any command starts (junk was a traceback
    in the middle of a run)."""
    import math

    for name, values in _parsed().items():
        kind = KINDS.get(name)
        if kind is None:
            return f"unknown fault {name!r}; known: {', '.join(sorted(KINDS))}"
        for v in values:
            if kind == "none" and v:
                return f"{name} takes no value, got {v!r}"
            if kind in ("int", "int-or-build") and not (
                v.isdigit() or (kind == "int-or-build" and v == "build")
            ):
                return f"{name}@K needs an iteration K, got {v!r}"
            if kind == "seconds":
                try:
                    ok = math.isfinite(float(v)) and 0 <= float(v) <= 86400
                except ValueError:
                    ok = False
                if not ok:
                    return f"{name}=S needs seconds from 0 to 86400, got {v!r}"
            if kind == "word" and not v:
                return f"{name} needs a value"
    return None


def active(name: str, value: object = "") -> bool:
    """Is fault ``name`` set for ``value`` (an iteration, or a restore part)?"""
    values = _parsed().get(name)
    return values is not None and str(value) in values


def value(name: str) -> str | None:
    values = _parsed().get(name)
    return next(iter(values)) if values else None


def pause_here(iteration: int) -> None:
    """``pause@K``: stop this process at checkpoint K until someone sends SIGCONT."""
    if active("pause", iteration):
        os.kill(os.getpid(), signal.SIGSTOP)


def hold_here(iteration: int, stop: object) -> None:
    """``hold@K``: before iteration K, sleep until ``stop`` (the run's stop flag) is true."""
    if active("hold", iteration):
        while not stop:
            time.sleep(0.02)


def stall() -> None:  # pragma: no cover - only ever ended by SIGKILL
    while True:
        time.sleep(3600)
