"""How every command that trains cells runs them (``matrix``, ``figures``): here, with one live
line per running cell (the local pool of CPU workers or GPU slots, or in-process with the
``debug`` executor), or submitted to SLURM as one job array and, with ``--wait``, waited for.
SIGTERM, and a SIGINT even when it was inherited as ignored, stop the cells (they checkpoint)."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import EXIT_OK, EXIT_TEMPFAIL, Executor


@dataclass(frozen=True)
class Execution:
    """How a command's cells run: here (local pool, debug) or on SLURM, and what it says."""

    executor: Executor
    pool: Any  # dispatch.LocalPool
    slurm: Any  # dispatch.SlurmProfile (slurm executor)
    folder: Path  # submitit's folder of this invocation
    wait: bool = False  # slurm: wait for the jobs to finish
    noun: str = "cells"  # in "submitted 28 cells as SLURM job array ..."
    running: str = "running cells"  # in "interrupted: the running cells checkpointed"
    submitted_hint: str = ""  # printed after submitting (slurm)


def execute(
    how: Execution, specs: list[Any], before_submit: Callable[[], None] | None = None
) -> int | None:
    """The one way every command (``matrix``, ``figures``) runs its cells: here, printing
    progress, or submitted to SLURM (then waited for with ``how.wait``). Returns the exit code
    to stop with (interrupted, or submitted without waiting), or None when the cells have
    finished and the command goes on."""
    from ..matrix import dispatch

    if how.executor.slurm:
        if before_submit is not None:
            before_submit()
        jobs = dispatch.run_slurm(specs, how.slurm, how.folder)
        array = jobs[0][1].split("_")[0]
        print(f"submitted {len(jobs)} {how.noun} as SLURM job array {array}; logs in {how.folder}")
        if how.submitted_hint:
            print(how.submitted_hint)
        if not how.wait:
            return EXIT_OK
        wait_slurm(specs)
    elif specs and not run_here(how.executor, how.pool, specs, how.folder):
        print(
            f"interrupted: the {how.running} checkpointed; run the same command to resume",
            file=sys.stderr,
        )
        return EXIT_TEMPFAIL
    return None


def wait_slurm(specs: list[Any], poll_s: float = 5.0) -> None:
    from ..matrix.cells import cell_state
    from ..matrix.dispatch import slurm_queue

    pending = {Path(spec.run_dir) for spec in specs}
    while pending:
        time.sleep(poll_s)
        queue = slurm_queue()
        pending = {
            d for d in pending if cell_state(d, queue).state in ("queued", "running", "pending")
        }


def run_here(executor: Executor, pool: Any, specs: list[Any], folder: Path) -> bool:
    """Run cells with the local or debug executor, printing progress; False if interrupted."""
    from ..matrix import dispatch
    from ..matrix.live import LiveProgress

    total, done = len(specs), 0
    live = LiveProgress(every=0 if executor.in_process else None)

    def event(kind: str, spec: Any, info: Any) -> None:
        nonlocal done
        if kind == "started":
            where = "CPU" if info.gpu is None else f"GPU {info.gpu}" + (
                f", {info.share} of it" if info.share < 1 else "")  # fmt: skip
            live.started(spec.run_id, Path(spec.run_dir))
            live.event(f"  start  {spec.run_id} ({where})")
            return
        done += 1
        msg = "" if info.get("state") == "completed" else f" ({info.get('message')})"
        live.finished(spec.run_id)
        live.event(f"  [{done}/{total}] {info.get('state')}: {spec.run_id}{msg}")

    if executor.in_process:
        for run_id, result in dispatch.run_debug(specs, folder).items():
            event("finished", next(s for s in specs if s.run_id == run_id), result)
        return True

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # like Ctrl-C: stop the cells, then exit
    # A matrix started in the background by a script inherits SIGINT as ignored (Python then
    # leaves it ignored): a SIGINT sent to it must still stop it, as Ctrl-C does.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with live:
            dispatch.run_local(specs, pool, folder, on_event=event)
    except KeyboardInterrupt:
        return False
    return True
