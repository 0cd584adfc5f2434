"""Exclusive run leases with a heartbeat, safe on shared (network) filesystems.

A lease is a file ``lease.G`` in the run directory, G a generation number. To acquire:

1. find the highest generation G; if ``lease.G`` is held by a live process, give up;
2. otherwise exclusively create ``lease.(G+1)`` (``O_CREAT | O_EXCL``: exactly one of any
   number of racing processes succeeds);
3. check that no higher generation appeared meanwhile (else give up), then delete the lower
   generations. Generations only grow, so a slow racer can never recreate a deleted lease.

The holder rewrites its file with a fresh heartbeat every ``heartbeat_every`` seconds and, at
each heartbeat, checks that nobody took the run over (a higher generation). Release marks the
file released instead of deleting it (deleting would let the generation count restart).

A lease is stale, and may be taken over, when it was released, when its heartbeat is older
than ``stale_after`` seconds, when its process is gone (same host: the PID with the recorded
start time no longer exists), or when it belongs to an earlier incarnation of the same SLURM
job (a requeued job keeps its job id).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config.run import config_diff
from ..fileio import atomic_write_json, read_json
from .rundir import TERMINAL_STATES, RunDir

PREFIX = "lease."
STALE_AFTER = 300.0  # seconds without a heartbeat before a lease may be taken over
HEARTBEAT_EVERY = 30.0


def _proc_start(pid: int) -> str | None:
    """Start time of a process (field 22 of /proc/PID/stat): tells a PID from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def slurm_owner() -> str | None:
    """``<job id>[_<array task>]`` of the SLURM job we run in, if any."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if task else job


def _generations(run: Path) -> list[int]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for p in run.iterdir():
            if p.name.startswith(PREFIX):
                with contextlib.suppress(ValueError):
                    out.append(int(p.name[len(PREFIX) :]))
    return sorted(out)


def read_holder(run: Path) -> dict[str, Any] | None:
    """Content of the newest lease file (None if there is none or it is unreadable)."""
    gens = _generations(run)
    if not gens:
        return None
    try:  # a regular file, bounded: a FIFO or /dev/zero planted there reads as unreadable
        doc = read_json(run / f"{PREFIX}{gens[-1]}", max_bytes=1 << 16)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_live(holder: dict[str, Any] | None, stale_after: float = STALE_AFTER) -> bool:
    """Does this lease content describe a process that may still be training?"""
    if holder is None or holder.get("released"):
        return False
    if holder.get("host") == socket.gethostname():
        start = _proc_start(int(holder.get("pid", -1)))
        if start is None or start != holder.get("pid_start"):
            return False
    owner = slurm_owner()
    if owner is not None and holder.get("slurm") == owner and holder.get("pid") != os.getpid():
        return False  # an earlier run of this same (requeued) SLURM job
    return time.time() - float(holder.get("heartbeat", 0)) < stale_after


class Lease:
    def __init__(
        self, run: Path, stale_after: float = STALE_AFTER, heartbeat_every: float = HEARTBEAT_EVERY
    ) -> None:
        self.run = run
        self.stale_after = stale_after
        self.heartbeat_every = heartbeat_every
        self.generation: int | None = None
        self.lost = False  # set by the heartbeat when another process took the run over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._content: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        assert self.generation is not None
        return self.run / f"{PREFIX}{self.generation}"

    def acquire(self) -> bool:
        """True if this process now holds the run; False if a live process does."""
        gens = _generations(self.run)
        if gens:
            top = self.run / f"{PREFIX}{gens[-1]}"
            try:
                holder = read_json(top, max_bytes=1 << 16)
                if not isinstance(holder, dict):
                    raise ValueError("not a lease")
            except (OSError, ValueError):
                # created but not yet written (live), or its writer died right after creating
                # it (stale once old): judge by the file's age
                with contextlib.suppress(OSError):
                    if time.time() - top.stat().st_mtime < self.stale_after:
                        return False
                holder = None
            if is_live(holder, self.stale_after):
                return False
        gen = gens[-1] + 1 if gens else 0
        path = self.run / f"{PREFIX}{gen}"
        self._content = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": _proc_start(os.getpid()),
            "slurm": slurm_owner(),
            "acquired": time.time(),
            "heartbeat": time.time(),
            "released": False,
        }
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._content, f)
            f.flush()
            os.fsync(f.fileno())
        self.generation = gen
        if _generations(self.run)[-1] != gen:  # a racer got a higher generation first
            self._mark_released()
            self.generation = None
            return False
        for g in _generations(self.run):
            if g < gen:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.run / f"{PREFIX}{g}")
        self._thread = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_every):
            self.beat()

    def beat(self) -> None:
        if self.generation is None or self.lost:
            return
        if _generations(self.run)[-1:] != [self.generation]:
            self.lost = True
            return
        self._content["heartbeat"] = time.time()
        with contextlib.suppress(OSError):
            atomic_write_json(self.path, self._content)

    def _mark_released(self) -> None:
        self._content["released"] = True
        self._content["heartbeat"] = time.time()
        with contextlib.suppress(OSError):
            atomic_write_json(self.path, self._content)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.generation is not None and not self.lost:
            if _generations(self.run)[-1:] == [self.generation]:
                self._mark_released()
            self.generation = None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(frozen=True)
class Refusal:
    """Why a run directory is not trained now: ``busy``, ``failed`` or ``already-<state>``."""

    state: str
    iteration: int
    message: str


def claim(run_dir: RunDir, doc: dict[str, Any]) -> Lease | Refusal:
    """Take a run directory for training, as every run (image or toy) does: its lease (a run
    that another live process holds is left alone), no symbolic links among its files, not
    finished (a completed or diverged run is never trained again), and the config of
    ``config.json`` the same as ``doc["config"]`` (``doc`` is written when the run is new).
    Returns the held lease (train under ``with lease``), or the refusal, with the lease
    released. The command line checked links and configs before submitting; they are
    checked again here, under the lease."""
    if run_dir.path.is_symlink():  # checked before the lease, which would be written there
        return Refusal("failed", 0, f"{run_dir.path} is a symbolic link; a run's files are "
                       "never written through links")  # fmt: skip
    run_dir.path.mkdir(parents=True, exist_ok=True)
    lease = Lease(run_dir.path)
    if not lease.acquire():
        return Refusal("busy", 0, f"{run_dir.path} is being trained by another process")
    refusal = _refusal(run_dir, doc)
    if refusal is not None:
        lease.release()
        return refusal
    try:
        if not run_dir.exists():
            atomic_write_json(run_dir.config_file, doc)
    except BaseException:  # a full disk, say: the lease is released, as `with lease` did
        lease.release()
        raise
    return lease


def _refusal(run_dir: RunDir, doc: dict[str, Any]) -> Refusal | None:
    linked = run_dir.linked_files()
    if linked:
        return Refusal(
            "failed", 0, f"{run_dir.path} holds symbolic links or special files "
            f"({', '.join(linked[:3])}); a run's files are never written through links",
        )  # fmt: skip
    status = run_dir.read_status() or {}
    if status.get("state") in TERMINAL_STATES:
        return Refusal(
            f"already-{status['state']}",
            int(status.get("iteration", 0)),
            f"run {run_dir.path.name} already {status['state']}; nothing to do",
        )
    if run_dir.exists():
        old = run_dir.read_config()["config"]
        if old != doc["config"]:
            diff = "; ".join(config_diff(old, doc["config"]))
            return Refusal("failed", 0, f"config differs from {run_dir.config_file}: {diff}")
    return None
