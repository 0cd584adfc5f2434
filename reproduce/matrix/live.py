"""The matrix's terminal while cells train here: one line per running cell with its progress,
rate and ETA, read from the cell's ``status.json`` (written every ``--log-every`` iterations),
under the start and finish events.

On a terminal the block of running cells is redrawn in place every 2 s; elsewhere (a log file,
a pipe, a SLURM job's output) it is printed as plain lines every 60 s, so a log stays
readable. ``REPRODUCE_PROGRESS_EVERY`` (seconds) overrides the period; 0 turns the lines off.
Each cell's own progress bar goes to its submitit log, as before.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TextIO

from .. import envvars
from .cells import cell_state, duration_text

ENV_EVERY = envvars.PROGRESS_EVERY
WIDTH = 100  # every line fits a 100-column terminal


def progress_line(run_dir: Path) -> str:
    """``  running  <run id>  7/12  58%  0.81 it/s  ETA 6s`` (or ``starting``)."""
    st = cell_state(run_dir)
    if not st.iters:
        return f"  starting {run_dir.name}"[:WIDTH]
    pct = 100 * st.iteration / st.iters
    rate = f"  {st.it_per_s:.3g} it/s" if st.it_per_s else ""
    eta = f"  ETA {duration_text(st.eta_s)}" if st.eta_s is not None else ""
    return f"  running  {run_dir.name}  {st.iteration}/{st.iters}  {pct:.0f}%{rate}{eta}"[:WIDTH]


class LiveProgress:
    """Thread-safe: ``event`` prints a line above the block; ``started``/``finished`` change
    the set of running cells; a background thread refreshes the block. Use as a context
    manager (the block is cleared on exit)."""

    def __init__(self, stream: TextIO | None = None, every: float | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        if every is None:
            env = envvars.number(ENV_EVERY)
            every = env if env is not None else (2.0 if self.tty else 60.0)
        self.every = every
        self.running: dict[str, Path] = {}
        self._drawn = 0  # lines of the block on screen (terminal only)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-progress", daemon=True)

    def __enter__(self) -> LiveProgress:
        if self.every > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            self._clear()

    def started(self, run_id: str, run_dir: Path) -> None:
        with self._lock:
            self.running[run_id] = run_dir

    def finished(self, run_id: str) -> None:
        with self._lock:
            self.running.pop(run_id, None)

    def event(self, line: str) -> None:
        with self._lock:
            self._clear()
            print(line, file=self.stream, flush=True)
            self._draw()

    # -- the block ---------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            with self._lock:
                if self.tty:
                    self._clear()
                    self._write_block()
                elif self.running:  # a log: plain lines, not redrawn
                    self._write_block()

    def _draw(self) -> None:
        """After an event line: redraw the block on a terminal (a log gets it on the period)."""
        if self.tty and self.every > 0:
            self._write_block()

    def _write_block(self) -> None:
        lines = [progress_line(d) for d in self.running.values()]
        for line in lines:
            print(line, file=self.stream)
        self.stream.flush()
        self._drawn = len(lines) if self.tty else 0

    def _clear(self) -> None:
        if self.tty and self._drawn:
            # up to the block's first line, then erase to the end of the screen
            self.stream.write(f"\x1b[{self._drawn}F\x1b[J")
            self.stream.flush()
        self._drawn = 0
