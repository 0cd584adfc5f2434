"""The run-directory contract and atomic file writes.

Layout of one run (``<results>/<run id>/``); ``RunDir`` names every file, and ``load_run`` is
the one reader of a run's state (``status``, the matrix summary and the report use it)::

    config.json      resolved RunConfig ("config"), RuntimeConfig ("runtime"), run id, schema,
                     dataset description; written once when the run is created
    status.json      state (running | interrupted | completed | diverged | failed), iterations
                     done, timings, message; rewritten atomically
    stats.jsonl      one JSON object per generator iteration (losses, Wasserstein estimate,
                     penalty, step wall time); append-only, cut back to the checkpoint on resume
    heldout.jsonl    the critic's statistics on held-out real images, at the log cadence
    metrics.jsonl    one row per evaluation (IS/FID/KID or the demo judge's numbers, the
                     judge, its checksum and thresholds); see evaluation/evaluator.py
    verdict.json     trained | low-quality | collapsed | diverged | failed, and why; written
                     when the run finishes (evaluation.write_verdict)
    submission.json  how the run was last dispatched (executor, SLURM job id); matrix/dispatch.py
    result.json      a toy run's (Figure 1) scalars; its arrays are in result.npz
    log.txt          human-readable event log (append-only)
    samples/         iter-NNNNNNN.png: fixed-noise 8x8 sample grids
    checkpoints/     ckpt-NNNNNNNN/{state.pt, meta.json}; see checkpoint.py
    lease.G          while a process trains the run; see lease.py

Outside it, ``<results>/tensorboard/<arch>/<procedure>/s<seed>-<hash>/`` holds the run's
TensorBoard event files (training/board.py), so that one ``--logdir`` shows a whole matrix.

Every file is written through ``reproduce/fileio.py`` (atomic whole-file writes, appends
that never follow a link).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..config.run import upgrade_config
from ..fileio import (
    append_text,
    atomic_write_bytes,
    atomic_write_json,
    last_jsonl_row,
    now_iso,
    read_json,
    read_jsonl,
)

TERMINAL_STATES = ("completed", "diverged")  # never trained again
STATES = ("running", "interrupted", "completed", "diverged", "failed")


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def stats_file(self) -> Path:
        return self.path / "stats.jsonl"

    @property
    def log_file(self) -> Path:
        return self.path / "log.txt"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    def sample_grid(self, iteration: int) -> Path:
        """The fixed-noise 8x8 sample grid saved at ``iteration``."""
        return self.samples_dir / f"iter-{iteration:07d}.png"

    def sample_grids(self) -> list[tuple[int, Path]]:
        """Every saved sample grid, as (iteration, path), oldest first."""
        found = []
        for p in self.samples_dir.glob("iter-*.png"):
            with contextlib.suppress(ValueError):
                found.append((int(p.stem.split("-", 1)[1]), p))
        return sorted(found)

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def heldout_file(self) -> Path:
        return self.path / "heldout.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def verdict_file(self) -> Path:
        return self.path / "verdict.json"

    @property
    def submission_file(self) -> Path:
        return self.path / "submission.json"

    @property
    def toy_result_file(self) -> Path:
        return self.path / "result.json"

    @property
    def toy_arrays_file(self) -> Path:
        return self.path / "result.npz"

    def exists(self) -> bool:
        return self.config_file.exists()

    def read_config(self) -> dict[str, Any]:
        """``config.json`` with its run config in today's spelling (``upgrade_config``), so
        every reader of a run directory sees renamed options under their new names; ValueError
        when the file holds no run config."""
        doc = read_json(self.config_file)
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            raise ValueError(f"{self.config_file}: not a run's config.json")
        return {**doc, "config": upgrade_config(doc["config"])}

    def read_status(self) -> dict[str, Any] | None:
        return _read_dict(self.status_file)

    def read_submission(self) -> dict[str, Any]:
        """How the run was last dispatched (``submission.json``: executor, job id), or {}."""
        return _read_dict(self.submission_file) or {}

    def write_status(self, state: str, **fields: Any) -> None:
        """Atomically (a temporary file renamed over it). On a disk with no byte left even
        that small file cannot be created: a terminal state (failed) is then written in place
        over the old status, compactly, so that it fits the blocks the file already has; a
        run that failed for want of space must never read as running."""
        doc = {"state": state, "updated": now_iso(), **fields}
        assert state in STATES, state
        try:
            atomic_write_json(self.status_file, doc)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT) or state != "failed":
                raise
            keep = ("state", "updated", "message", "reason", "iteration", "iters")
            compact = json.dumps({k: doc[k] for k in keep if k in doc}).encode()
            fd = os.open(self.status_file, os.O_WRONLY | os.O_NOFOLLOW)
            try:
                os.pwrite(fd, compact, 0)
                os.ftruncate(fd, len(compact))
                os.fsync(fd)
            finally:
                os.close(fd)

    def linked_files(self) -> list[str]:
        """The run's files (and checkpoint entries) that are symbolic links, FIFOs or devices:
        a run directory holding any is refused, since its appends would land in whatever a
        link names, and a FIFO would hang its reader."""
        if self.path.is_symlink():  # everything in it would land where the link points
            return [f"{self.path.name} itself"]
        found = []
        for d in (self.path, self.checkpoints_dir):
            with contextlib.suppress(OSError):
                found += [str(p.relative_to(self.path)) for p in d.iterdir() if _odd(p)]
        return sorted(found)

    def log(self, message: str) -> None:
        append_text(self.log_file, f"{now_iso()} {message}\n")

    # -- per-iteration statistics ------------------------------------------------------------
    def append_stats(self, rows: Iterable[dict[str, Any]]) -> None:
        lines = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
        if not lines:
            return
        append_text(self.stats_file, lines, fsync=True)

    def truncate_stats(self, iteration: int) -> None:
        """Keep only rows of iterations < ``iteration`` (a resume recomputes the rest)."""
        self._keep_rows(self.stats_file, lambda it: it < iteration)

    def set_aside_rows(self, tag: str) -> list[str]:
        """Rename the non-empty statistics, held-out and evaluation files to ``NAME.tag``
        (a run trained again from iteration 0 keeps what its earlier start wrote); the
        new names."""
        moved = []
        for path in (self.stats_file, self.heldout_file, self.metrics_file):
            with contextlib.suppress(FileNotFoundError):
                if os.lstat(path).st_size > 0:
                    aside = path.with_name(f"{path.name}.{tag}")
                    os.rename(path, aside)
                    moved.append(aside.name)
        return moved

    def keep_valid_metrics(self, iters: int) -> None:
        """Keep only ``metrics.jsonl``'s rows of iterations in [0, iters] (what a run writes):
        rows of another shape or beyond the run are dropped, before anything reads them."""
        self._keep_rows(self.metrics_file, lambda it: 0 <= it <= iters)

    def _keep_rows(self, path: Path, keep: Callable[[int], bool]) -> None:
        """Rewrite a JSON-lines file atomically with the rows whose ``iter`` passes ``keep``.
        A file too large to be this run's (links and FIFOs are refused when the run is
        claimed) is moved aside, with a line in the log, and the run starts a new one."""
        if not path.exists():
            return
        try:
            rows = [r for r in read_jsonl(path) if keep(r.get("iter", -1))]
        except OSError as e:
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            os.rename(path, aside)
            self.log(f"moved {path.name} aside to {aside.name}: {e}")
            return
        data = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows).encode()
        atomic_write_bytes(path, data)

    def append_heldout(self, row: dict[str, Any]) -> None:
        append_text(self.heldout_file, json.dumps(row, allow_nan=True) + "\n")

    def truncate_heldout(self, iteration: int) -> None:
        """Keep rows measured at or before ``iteration`` (a resume recomputes the rest,
        identically: they depend only on the weights and the iteration)."""
        self._keep_rows(self.heldout_file, lambda it: it <= iteration)

    def read_stats(self) -> list[dict[str, Any]]:
        return read_jsonl(self.stats_file)

    def last_stats(self) -> dict[str, Any]:
        """The newest row of ``stats.jsonl`` (read from the end of the file), or {}."""
        return last_jsonl_row(self.stats_file)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_file)


def _odd(p: Path) -> bool:
    """A link, or neither a regular file nor a folder (a FIFO would hang its reader, a device
    feed it without end)."""
    try:
        mode = os.lstat(p).st_mode
    except OSError:
        return False
    return stat.S_ISLNK(mode) or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _read_dict(path: Path) -> dict[str, Any] | None:
    try:
        doc = read_json(path)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class RunReader(Protocol):
    """How ``load_run`` reads a run's files: plainly (``PlainReader``), or as the report does,
    with size limits and a warning for each unreadable file (``report.Loader``)."""

    def json(self, path: Path) -> dict[str, Any] | None: ...

    def jsonl(self, path: Path) -> list[dict[str, Any]]: ...


class PlainReader:
    """Missing or unreadable JSON reads as None; a torn last JSON line is ignored."""

    def json(self, path: Path) -> dict[str, Any] | None:
        return _read_dict(path)

    def jsonl(self, path: Path) -> list[dict[str, Any]]:
        try:
            return read_jsonl(path)
        except OSError:  # a link, FIFO, device or a file over the bound: no rows
            return []


@dataclass(frozen=True)
class LoadedRun:
    """One run directory's state, read once: what ``status``, the matrix summary and the report
    show. Missing or unreadable files read as empty ({} or [])."""

    dir: RunDir
    status: dict[str, Any]
    verdict: dict[str, Any]
    submission: dict[str, Any]
    evaluations: list[dict[str, Any]]  # metrics.jsonl, in file order
    last: dict[str, Any]  # the newest stats.jsonl row

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def latest(self) -> dict[str, Any]:
        """The newest evaluation ({} before the first)."""
        return newest_metrics(self.evaluations) or {}


def load_run(path: Path, reader: RunReader | None = None) -> LoadedRun:
    """The one reader of a run directory's state (see the layout above)."""
    rd, read = RunDir(path), reader or PlainReader()
    return LoadedRun(
        dir=rd,
        status=read.json(rd.status_file) or {},
        verdict=read.json(rd.verdict_file) or {},
        submission=read.json(rd.submission_file) or {},
        evaluations=read.jsonl(rd.metrics_file),
        last=rd.last_stats(),
    )


# --------------------------------------------------------------------------------------------
# metrics.jsonl: the evaluations of a run (written by evaluation.Evaluator)
# --------------------------------------------------------------------------------------------
def metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    return RunDir(run_dir).read_metrics()


def judge_name(row: dict[str, Any] | None) -> str | None:
    """Which network scored an evaluation row: ``demo-judge`` or ``inception`` (rows written
    before the demo judge existed carry no ``judge`` key: they are Inception's)."""
    if not row:
        return None
    judge = row.get("judge")
    return judge if isinstance(judge, str) else "inception"


def final_metrics(run_dir: Path) -> dict[str, Any] | None:
    finals = [r for r in metrics_rows(run_dir) if r.get("kind") == "final"]
    return finals[-1] if finals else None


def newest_metrics(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest evaluation (the final one at a tie), or None before the first."""
    return max(rows, key=lambda r: (r.get("iter", -1), r.get("kind") == "final")) if rows else None
