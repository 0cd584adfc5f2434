"""Stopping on signals: the handler only sets a flag; the training loop checkpoints at the next
iteration boundary. No torch here: a matrix cell installs the flag first thing, before the
training code is imported (seconds), so that a SIGTERM or Ctrl-C in that time is not taken by
submitit's job handlers (which ignore SIGTERM) and lost."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator
from types import FrameType

from .. import faults

STOP_GRACE_S = 30.0  # an iteration still running this long after a stop is abandoned


class StopFlag:
    """Set by SIGTERM/SIGINT/USR2. The loop reads it at every iteration boundary (then saves a
    checkpoint and exits) and also between critic steps: an iteration still running
    ``grace`` seconds after the request is abandoned (``IterationAbandoned``), so a stop is
    honoured within the grace time plus one critic step however long an iteration is (SLURM
    signals 120 s before a time limit). Nothing of the abandoned iteration is saved: the run
    resumes, bit-exactly, from its newest checkpoint."""

    def __init__(self, grace: float | None = None) -> None:
        self.reason: str | None = None
        self.requested_at: float | None = None
        fault = faults.value("stop-grace")
        self.grace = grace if grace is not None else float(fault or STOP_GRACE_S)

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason, self.requested_at = reason, time.monotonic()

    def __bool__(self) -> bool:
        return self.reason is not None

    def overdue(self) -> bool:
        return self.requested_at is not None and time.monotonic() - self.requested_at > self.grace

    @contextlib.contextmanager
    def installed(
        self, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    ) -> Iterator[None]:
        """Route ``signals`` to this flag while the block runs (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request(signal.Signals(signum).name)

        previous = {s: signal.signal(s, handler) for s in signals}
        # a matrix cell starts with SIGINT blocked (dispatch.run_local): a Ctrl-C that came
        # before this point is pending, and is delivered to the handler now
        blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for s, h in previous.items():
                signal.signal(s, h)
