"""The training loop's bookkeeping, as small named objects: the run's status file
(``RunStatus``), its training-time stopwatch (``Stopwatch``) and the buffer that keeps each
iteration's statistics on the device until one host read writes them (``StatsBuffer``)."""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config.run import RunConfig
from ..rundir.rundir import RunDir
from . import flops
from .board import Board
from .trainer import Trainer, steady_rate


class RunStatus:
    """Writes ``status.json``: the state, progress, speed (and MFU where the peak is known)
    and where this process runs. Call it with the state and any extra fields."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: RunDir,
        trainer: Trainer,
        env: dict[str, Any],
        cost: flops.IterationCost | None,
        peak: float | None,
        skipped: list[dict[str, str | None]],
        board: Board,
    ) -> None:
        self.cfg, self.run_dir, self.trainer, self.env = cfg, run_dir, trainer, env
        self.board = board
        self.cost, self.peak, self.skipped = cost, peak, skipped
        self.started_at = time.time()  # this process's start (epoch seconds)
        self.start_iteration = trainer.iteration  # where this process started (resumed) from

    def __call__(self, state: str, **extra: Any) -> None:
        trainer, env = self.trainer, self.env
        it_per_s = steady_rate(trainer)
        speed: dict[str, Any] = {
            "peak_tflops": self.peak,
            "peak_precision": flops.mode_precision(self.cfg.mode),
        }
        if self.cost is not None:
            speed |= self.cost.to_dict() | flops.utilisation(self.cost.flops, it_per_s, self.peak)
        if state == "running" and it_per_s is not None and trainer.iteration > self.start_iteration:
            images = it_per_s * self.cfg.n_critic * self.cfg.batch_size
            self.board.speed(trainer.iteration, trainer.train_seconds, {
                "it_per_s": it_per_s, "images_per_s": images,
                "tflops": speed.get("tflops"), "mfu": speed.get("mfu")})  # fmt: skip
        self.run_dir.write_status(
            state,
            iteration=trainer.iteration,
            iters=self.cfg.iters,
            train_seconds=trainer.train_seconds,
            setup_seconds=trainer.setup_seconds,
            setup_iterations=trainer.setup_iterations,
            it_per_s=it_per_s,
            **speed,
            device=env["device"],
            mode=self.cfg.mode,
            engine=trainer.steps.name,
            data_placement=trainer.batches.placement,
            share_gpu=trainer.batches.share,
            host=env["host"],
            pid=os.getpid(),
            cuda_visible_devices=env["cuda_visible_devices"],
            slurm_job=env["slurm_job"],
            started_at=self.started_at,
            start_iteration=self.start_iteration,
            skipped_checkpoints=self.skipped,  # unusable checkpoints this process passed over
            **extra,
        )

    def failed(self, msg: str, reason: str) -> None:
        # best effort: on a full disk even these small writes may fail
        with contextlib.suppress(OSError):
            self("failed", message=msg, reason=reason)
        with contextlib.suppress(OSError):
            self.run_dir.log(f"failed: {msg}")


class Stopwatch:
    """The run's training time: windows between statistics reads, less the side work done
    inside a window (sample grids, checkpoints, held-out rows, evaluations)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.excluded = 0.0

    @contextlib.contextmanager
    def aside(self) -> Iterator[float]:
        """Time spent in the block is not training time; yields the block's start."""
        t = time.perf_counter()
        try:
            yield t
        finally:
            self.excluded += time.perf_counter() - t

    def elapsed(self, now: float) -> float:
        """Training seconds of the open window up to ``now``."""
        return now - self.start - self.excluded

    def close_window(self) -> float:
        """The open window's training seconds; a new window starts."""
        now = time.perf_counter()
        seconds = self.elapsed(now)
        self.start, self.excluded = now, 0.0
        return seconds


class Boundary:
    """What the end of an iteration owes, for every run (image and toy). The stop request is
    read once: a signal that arrives later is handled at the next boundary (reading it twice
    could stop without the checkpoint); at the last iteration the run simply completes, which
    saves anyway. A checkpoint is due when stopping, ``every_s`` seconds after the last one,
    and every ``every_iters`` iterations (0 turns either off)."""

    def __init__(self, iters: int, every_s: float, every_iters: int = 0) -> None:
        self.iters, self.every_s, self.every_iters = iters, every_s, every_iters
        self.last_checkpoint = time.monotonic()

    def owes(self, done: int, stop_requested: bool) -> tuple[bool, bool]:
        """(stopping, checkpoint due) after ``done`` iterations."""
        stopping = stop_requested and done < self.iters
        due = (
            stopping
            or (self.every_s > 0 and time.monotonic() - self.last_checkpoint >= self.every_s)
            or (self.every_iters > 0 and done % self.every_iters == 0)
        )
        return stopping, due

    def saved(self, at: float | None = None) -> None:
        """A checkpoint was saved (at ``time.monotonic()`` value ``at``, default now)."""
        self.last_checkpoint = time.monotonic() if at is None else at


class IterationTimer:
    """Each iteration's seconds as the device spent them. On the CPU the host's clock around
    the step. On CUDA the step only queues kernels, so the host's clock says how long the
    queueing took: a CUDA event is recorded before and after each step instead, and the pair
    is read once the window's statistics have been read (their one host sync has then
    passed both events, so reading them waits for nothing)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def begin(self) -> Any:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def end(self, begun: Any) -> Any:
        """The iteration's time: seconds, or a pair of CUDA events to read with ``seconds``."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return begun, event
        return time.perf_counter() - begun

    @staticmethod
    def seconds(timed: Any) -> float:
        if isinstance(timed, float):
            return timed
        start, end = timed
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000.0  # milliseconds


class StatsBuffer:
    """Each iteration's statistics, kept on the device until ``flush`` reads them all with one
    host sync, appends one row per iteration to ``stats.jsonl`` and finds divergence. Its
    timer times each iteration (``begin`` before the step, ``add`` after it)."""

    def __init__(
        self, trainer: Trainer, run_dir: RunDir, bar: Any, clock: Stopwatch, board: Board
    ) -> None:
        self.trainer, self.run_dir, self.bar, self.clock = trainer, run_dir, bar, clock
        self.board = board
        # (iteration, stats, its time, set-up), timings counted once the window is flushed
        self.pending: list[tuple[int, dict[str, Tensor], Any, bool]] = []
        self.noted = False  # the engine's note logged
        self.nan = torch.tensor(float("nan"), device=trainer.device)
        self.timer = IterationTimer(trainer.device)

    def begin(self) -> Any:
        """Call before an iteration's step; hand the result to ``add``."""
        return self.timer.begin()

    def add(self, it: int, stats: dict[str, Tensor], begun: Any, setup: bool) -> None:
        self.pending.append((it, stats, self.timer.end(begun), setup))

    def flush(self) -> int | None:
        """Write the pending rows; the first iteration with a non-finite loss or parameter
        (None if all are finite)."""
        trainer, pending = self.trainer, self.pending
        if not pending:
            return None
        keys = [*trainer.stat_keys, "generator_loss"]
        values = torch.stack(
            [torch.stack([s.get(k, self.nan) for k in keys]) for _, s, _, _ in pending]
        ).tolist()  # (n, len(keys)): the only device->host read of the statistics
        window = self.clock.close_window()
        trainer.train_seconds += window
        times = [self.timer.seconds(timed) for _, _, timed, _ in pending]
        for (_, _, _, setup), secs in zip(pending, times, strict=True):
            if setup:
                trainer.setup_seconds += secs
                trainer.setup_iterations += 1
        rows, diverged_at = [], None
        for (it, _, _, _), secs, vals in zip(pending, times, values, strict=True):
            row: dict[str, Any] = {"iter": it, "time": secs}
            row.update(zip(keys, vals, strict=True))
            if it == 0:
                row["generator_loss"] = None  # no generator step at iteration 0
            rows.append(row)
            if not all(math.isfinite(v) for k, v in row.items() if k in keys and v is not None):
                diverged_at = it
                break
        if diverged_at is None and not trainer.parameters_finite():
            diverged_at = pending[-1][0]
        self.run_dir.append_stats(rows)
        self.board.stats(rows, trainer.train_seconds, window)
        if trainer.steps.note and not self.noted:
            self.noted = True
            self.run_dir.log(f"warning: {trainer.steps.note}")
        last = rows[-1]
        shown = ("critic_loss", "wdist", "generator_loss")
        self.bar.set_postfix(
            {k: f"{last[k]:.3g}" for k in shown if last.get(k) is not None}, refresh=False
        )
        pending.clear()
        return diverged_at


@dataclass
class Outcome:
    """How a call to ``train_run`` or ``toy.run_toy`` ended.

    state: completed | diverged | interrupted | failed (the run's status) or, without touching
    the run: already-completed | already-diverged | busy (another live process holds it) |
    lost (another process took the run over while we trained).
    """

    state: str
    iteration: int
    message: str
    run_dir: Path
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """What a matrix cell's job returns (submitit pickles it back to the dispatcher)."""
        return {"state": self.state, "iteration": self.iteration, "message": self.message,
                "run_dir": str(self.run_dir)}  # fmt: skip
