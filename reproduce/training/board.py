"""TensorBoard event files of a run, written through ``torch.utils.tensorboard`` while it
trains: every logged statistic, every evaluation, the throughput, the fixed-noise sample grid
at every sample step, and the run's config as hparams.

Where: ``<results>/tensorboard/<arch>/<procedure>/s<seed>-<config hash>/``, so that
``tensorboard --logdir results/tensorboard`` shows a matrix as ``<arch>/<procedure>/s<seed>``
runs side by side (the hash keeps runs of other widths or lengths apart).

Axes: the step is the number of generator iterations done (so the statistics of the row
``"iter": i`` of ``stats.jsonl`` are at step i + 1, and a sample grid or an evaluation made
after N iterations at step N); the wall time is the run's training time in seconds
(``train_seconds``), so TensorBoard's "relative" axis is the paper's wall-clock axis (and
"wall" starts at 1970).

Resume-safe: everything up to the checkpoint at iteration N (step N) is on disk before that
checkpoint is written. A run that resumes from it first rewrites the event files already
there without the events of later steps (``purge``: the process that wrote them died; the
resumed run recomputes them identically), as ``stats.jsonl`` is cut back to the checkpoint,
so the files hold each step once, with the values of the run that survived, for any reader
(not only TensorBoard, whose own ``purge_step`` heuristics would hide duplicates but leave
them in the files). A run that starts from iteration 0 has committed nothing: the event
files of a process that died before its first checkpoint are deleted.

Cheap: events are written and flushed at the statistics reads the loop already makes (one
host sync every ``--log-every`` iterations), never in the hot loop, and flushed again before
every checkpoint; ``--no-tensorboard`` turns them off.
Nothing here contacts the network.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..evaluation.keys import FID, IS_MEAN, IS_STD, KID_MEAN
from ..fileio import NotRegularFile, fsync_dir, make_real_dirs
from ..rundir.layout import ResultsDir

if TYPE_CHECKING:
    from torch import Tensor

    from ..config.run import RunConfig

# stats.jsonl keys -> TensorBoard tags
STAT_TAGS = {
    "critic_loss": "train/critic_loss",
    "generator_loss": "train/generator_loss",
    "wdist": "train/wasserstein_estimate",
    "gp": "train/gradient_penalty",
    "d_real": "train/d_real",
    "d_fake": "train/d_fake",
}
EVAL_TAGS = {
    IS_MEAN: "eval/inception_score",
    IS_STD: "eval/inception_score_std",
    FID: "eval/fid",
    KID_MEAN: "eval/kid",
    "modes_covered": "eval/modes_covered",
    "confident_fraction": "eval/confident_fraction",
    "diversity": "eval/diversity",
}


def _redone_at_the_end(tag: str) -> bool:
    """What a run resumed from its last checkpoint writes again: the last sample grid and
    the final evaluation (both made after that checkpoint)."""
    return tag == "samples" or tag.endswith("/final")


def purge(events: Path, last_step: int, at_end: bool = False) -> int:
    """Rewrite one event file (atomically) without the summaries of steps after ``last_step``
    (``at_end``: and those a run resumed at its end writes again at ``last_step``); delete it
    when no summary is left (at ``last_step`` 0: nothing was committed). A torn last record (a
    killed writer) is dropped. Returns the records removed."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    keep, dropped = [], 0
    for record in RawEventFileLoader(str(events)).Load():
        event = Event.FromString(record)
        tags = [v.tag for v in event.summary.value] if event.HasField("summary") else []
        later = event.step > last_step or last_step == 0
        again = at_end and event.step == last_step and any(map(_redone_at_the_end, tags))
        if tags and (later or again):
            dropped += 1
        else:
            keep.append(record)
    if last_step == 0 or not any(Event.FromString(r).HasField("summary") for r in keep):
        events.unlink()
        return dropped
    if dropped:
        tmp = events.with_name(f".{events.name}.tmp")
        with tmp.open("wb") as f:
            writer = RecordWriter(f)
            for record in keep:
                writer.write(record)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, events)
        fsync_dir(events.parent)
    return dropped


def _quiet_writer_threads() -> None:
    """TensorBoard writes events in a thread; when a write fails there (a full disk), the
    thread keeps the exception and the next write or flush raises it in the training thread,
    where the run handles it (a full disk marks the run failed, as ever). Python would also
    print the thread's traceback on stderr: not for these threads."""
    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread

    if getattr(threading.excepthook, "_board", False):
        return
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.thread, _AsyncWriterThread):
            previous(args)

    hook._board = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def board_dir(results: Path, cfg: RunConfig) -> Path:
    """Where a run's event files go (see the module docstring)."""
    return ResultsDir(results).board(cfg.arch, cfg.procedure, cfg.seed, cfg.hash())


class Board:
    """The event writer of one training process; every method is a no-op when disabled."""

    def __init__(
        self,
        path: Path | None,
        start_iteration: int,
        at_end: bool = False,
        evaluations: Sequence[dict[str, Any]] = (),
        root: Path | None = None,
    ) -> None:
        """``root``: the results directory; no folder between it and ``path``, and no event
        file, may be a link (or a FIFO or device): NotRegularFile (an OSError) then, before
        anything is written or deleted, since a purge rewrites or deletes whatever it names."""
        self.path = path
        self.writer: Any = None
        if path is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        _quiet_writer_threads()
        make_real_dirs(root if root is not None else path.parent, path)
        olds = sorted(path.glob("events.out.tfevents.*"))
        for old in olds:
            if not stat.S_ISREG(os.lstat(old).st_mode):
                raise NotRegularFile(f"{old} is not a regular file; TensorBoard events not written")
        for old in olds:
            purge(old, start_iteration, at_end)
        self.writer = SummaryWriter(str(path), flush_secs=30)
        # evaluations are recorded in metrics.jsonl and never made twice: those the purge
        # removed (or a killed process never flushed) are written again from their rows
        for row in evaluations:
            step = row.get("iter")
            final_again = at_end and step == start_iteration and row.get("kind") == "final"
            if isinstance(step, int) and (step > start_iteration or final_again):
                self.evaluation(row)

    def config(self, cfg: RunConfig, run_id: str) -> None:
        """The run's config as hparams (TensorBoard's HPARAMS tab) and as text."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        values = {k: v for k, v in cfg.to_dict().items() if isinstance(v, int | float | str)}
        exp, ssi, sei = hparams(values, {"eval/inception_score": float("nan")})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text(
            "config", f"`{run_id}`\n\n```\n{json.dumps(cfg.to_dict(), indent=2)}\n```"
        )

    def stats(self, rows: list[dict[str, Any]], until: float, window: float) -> None:
        """One scalar per statistic per iteration; wall times spread over the window's training
        seconds (``until - window`` to ``until``) in proportion to each iteration's time."""
        if self.writer is None or not rows:
            return
        times = np.cumsum([max(float(r.get("time") or 0.0), 0.0) for r in rows])
        total = float(times[-1]) or 1.0
        for row, t in zip(rows, times, strict=True):
            wall = until - window + window * float(t) / total
            for key, tag in STAT_TAGS.items():
                value = row.get(key)
                if value is not None:
                    self.writer.add_scalar(tag, value, row["iter"] + 1, walltime=wall)
        self.flush()  # at each statistics read: a watcher sees them now

    def speed(self, iteration: int, wall: float, values: dict[str, float | None]) -> None:
        """Throughput at a statistics read: it/s, images/s, TFLOP/s and MFU when known."""
        if self.writer is None:
            return
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(f"speed/{key}", value, iteration, walltime=wall)

    def evaluation(self, row: dict[str, Any]) -> None:
        if self.writer is None:
            return
        step, wall = row["iter"], row.get("train_seconds")
        for key, tag in EVAL_TAGS.items():
            value = row.get(key)
            if isinstance(value, int | float) and np.isfinite(value):
                self.writer.add_scalar(f"{tag}/{row.get('kind', 'periodic')}", value, step,
                                       walltime=wall)  # fmt: skip

    def samples(self, image: Tensor, iteration: int, wall: float) -> None:
        """The fixed-noise sample grid (uint8, 3 x H x W)."""
        if self.writer is None:
            return
        self.writer.add_image("samples", image, iteration, walltime=wall, dataformats="CHW")

    def flush(self) -> None:
        """Onto the disk (also before every checkpoint: what a checkpoint commits must not be
        lost with the process)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Best effort: a run that stops on a full disk (or any error) has already recorded
        why; the events it could not write are lost with it, and closing never raises."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with contextlib.suppress(Exception):
                writer.close()
