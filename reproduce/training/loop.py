"""The one training loop for all four procedures (SPEC.md B.2), and the run around it.

``train_run`` takes the run's lease, checks its config, finds the judge, restores the newest
usable checkpoint (or starts), then ``_loop`` runs the iterations (``Trainer.step``: the
schedule, in trainer.py; no loss maths here, see gan/procedures.py) in labelled blocks: one
iteration, what the boundary owes, statistics and divergence, side work, checkpoint and stop.
The bookkeeping (status file, stopwatch, statistics buffer) is in bookkeeping.py.

Statistics stay on the device and are read every ``log_every`` iterations (one host sync), so
the hot loop never waits for the GPU; every iteration still gets its own row in stats.jsonl.
Divergence (a non-finite loss or parameter) is found at those reads and before every
checkpoint, so a checkpoint never holds a diverged state.
"""

from __future__ import annotations

import contextlib
import errno
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import faults
from ..config.run import SCHEMA_VERSION, RunConfig, config_diff, upgrade_config
from ..config.runtime import RuntimeConfig
from ..data.datasets import (
    ImageDataset,
    heldout_split,
)
from ..data.images import grid, save_png
from ..errors import DiskFullError
from ..evaluation import judge, metrics
from ..evaluation.evaluator import Evaluator, write_verdict
from ..rundir import checkpoint
from ..rundir.lease import Lease, Refusal, claim
from ..rundir.rundir import RunDir
from . import flops
from .board import Board, board_dir
from .bookkeeping import Boundary, Outcome, RunStatus, StatsBuffer, Stopwatch
from .stopping import STOP_GRACE_S as STOP_GRACE_S
from .stopping import StopFlag as StopFlag
from .trainer import IterationAbandoned, Trainer, configure_numerics, environment
from .validate import InvalidState, check_state

# StopFlag lives in stopping.py (no torch): a matrix cell installs it before anything heavy
# is imported, so no signal reaches the process while only submitit's handlers are in place


# --------------------------------------------------------------------------------------------
# the run: lease, config, judge, resume
# --------------------------------------------------------------------------------------------
def run_config_document(
    cfg: RunConfig, rt: RuntimeConfig, dataset: ImageDataset, run_id: str
) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "run_id": run_id,
        "config_hash": cfg.hash(),
        "config": cfg.to_dict(),
        "runtime": rt.to_dict(),
        "dataset": dataset.info,
    }


def train_run(
    cfg: RunConfig,
    rt: RuntimeConfig,
    dataset: ImageDataset,
    run_dir: RunDir,
    device: torch.device,
    stop: StopFlag | None = None,
) -> Outcome:
    """Train one run to completion (or until stopped), resuming from its newest checkpoint.

    Takes the run's lease first; a run that another live process holds is left alone
    ("busy"), and a completed or diverged run is never trained again.
    """
    stop = stop if stop is not None else StopFlag()
    claimed = claim(run_dir, run_config_document(cfg, rt, dataset, run_dir.path.name))
    if isinstance(claimed, Refusal):
        return Outcome(claimed.state, claimed.iteration, claimed.message, run_dir.path)
    with claimed as lease, current_device(device):
        return _train_locked(cfg, rt, dataset, run_dir, device, stop, lease)


def out_of_memory(e: BaseException, cfg: RunConfig, device: torch.device, when: str) -> str:
    """One line: where memory ran out, torch's first line, and what to change."""
    first = (str(e).strip().splitlines() or ["out of memory"])[0]
    return (
        f"out of memory on {device} {when} (batch {cfg.batch_size}, width {cfg.dim}): "
        f"{first[:200]}; lower --batch-size, put fewer cells on each GPU (--cells-per-gpu), "
        "or keep the images on the host (--data-placement host)"
    )


def current_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The run's CUDA device made current for the whole run (``torch.cuda.device``): CUDA graph
    capture streams, recorded events and torch-fidelity's ``.cuda()`` use the current device,
    which is cuda:0 unless set, so a run on cuda:1 captured and scored on the wrong GPU.
    Nothing for other devices."""
    if device.type == "cuda" and device.index is not None:
        return torch.cuda.device(device)
    return contextlib.nullcontext()


class WeightsError(Exception):
    pass


def _job_weights(rt: RuntimeConfig) -> metrics.InceptionWeights:
    """The Inception weights resolved at submission, checked again now (the job may run on
    another node, much later): same file, same checksum, or a clear failure."""
    path = Path(rt.inception_weights or "")
    if not rt.inception_weights or not path.is_file():
        raise WeightsError(f"Inception weights not found at {path}; {metrics.FETCH_HINT}")
    digest = metrics.sha256_file(path)
    if rt.inception_sha256 and digest != rt.inception_sha256:
        raise WeightsError(
            f"Inception weights {path} changed since submission (sha256 {digest[:16]}..., "
            f"expected {rt.inception_sha256[:16]}...); {metrics.FETCH_HINT}"
        )
    return metrics.InceptionWeights(str(path), digest, staged=False)


def _evaluator(
    cfg: RunConfig, rt: RuntimeConfig, dataset: ImageDataset, run_dir: RunDir, device: torch.device
) -> Evaluator | None:
    """The run's evaluator with its judge (the demo judge, or the Inception weights checked
    again); None when evaluation is off. Raises WeightsError."""
    if not rt.eval_enabled:
        return None
    weights: metrics.InceptionWeights | judge.Judge
    if rt.judge_kind == "demo":
        weights, how = judge.resolve_judge(run_dir.log)
        run_dir.log(f"demo judge {how}: {weights.path} (sha256 {weights.sha256[:16]}...)")
    else:
        weights = _job_weights(rt)
    return Evaluator(cfg, rt, dataset, run_dir, device, weights)


@dataclass
class Restored:
    """What resuming found: the trainer (loaded from the newest usable checkpoint, or fresh),
    that checkpoint and its state, and the checkpoints passed over."""

    trainer: Trainer
    checkpoint: tuple[checkpoint.Checkpoint, dict[str, Any]] | None = None
    skipped: list[dict[str, str | None]] = field(default_factory=list)
    unusable: list[Path] = field(default_factory=list)


def _restore(
    cfg: RunConfig, rt: RuntimeConfig, dataset: ImageDataset, run_dir: RunDir, device: torch.device
) -> Restored | Outcome:
    """Load the newest checkpoint that verifies and fits this run; an Outcome ("failed") when
    a checkpoint holds another config."""

    def fresh() -> Trainer:
        return Trainer(
            cfg, dataset, device, rt.data_placement, rt.cuda_graphs, rt.compile_mode,
            rt.share_gpu,
        )  # fmt: skip

    found = Restored(fresh())
    ckpt_dir = run_dir.checkpoints_dir
    for orphan in checkpoint.remove_orphans(ckpt_dir):
        run_dir.log(f"removed incomplete checkpoint write {orphan.name}")
    # loaded to the CPU whatever the run's device: the modules' and optimisers' own
    # load_state_dict move each tensor to where its parameter lives, and the RNG states must
    # stay CPU ByteTensors (torch.set_rng_state refuses any other)
    for ckpt, state, why in checkpoint.candidates(ckpt_dir, map_location="cpu"):
        if state is not None and state.get("config_hash") != cfg.hash():
            if isinstance(state.get("config"), dict):
                diff = "; ".join(config_diff(upgrade_config(state["config"]), cfg.to_dict()))
                msg = f"checkpoint {ckpt.path} has another config: {diff}"
                return Outcome("failed", 0, msg, run_dir.path)
            why, state = "holds no config", None
        if state is not None:
            try:  # every field as this run would have written it there, or skipped
                check_state(state, found.trainer, ckpt.iteration)
            except InvalidState as e:
                why, state = f"is not a valid training state of this run ({e})", None
        if state is not None:
            try:
                found.trainer.load_state_dict(state)
                found.checkpoint = (ckpt, state)
                break
            except Exception as e:  # wrong keys or shapes: the trainer may be half-loaded
                why = f"does not fit this run ({checkpoint.reason(e)})"
                found.trainer = fresh()
        found.skipped.append({"checkpoint": ckpt.path.name, "reason": why})
        found.unusable.append(ckpt.path)
        run_dir.log(f"skipped checkpoint {ckpt.path.name}: {why}")
    return found


def _start(
    cfg: RunConfig, rt: RuntimeConfig, run_dir: RunDir, found: Restored, env: dict[str, Any]
) -> Outcome | None:
    """Log how the run starts (resumed, fresh, or again over unusable checkpoints); an
    Outcome ("failed") when it had progress and no checkpoint can be used."""
    trainer, skipped = found.trainer, found.skipped
    if found.checkpoint is not None or rt.restart_invalid_checkpoints:
        for path in found.unusable:  # out of the way of the checkpoints this run will write
            run_dir.log(f"moved {path.name} aside to {checkpoint.set_aside(path).name}")
    if found.checkpoint is not None:
        ckpt, loaded = found.checkpoint
        old_env = loaded["env"] if isinstance(loaded.get("env"), dict) else {}
        moved = [k for k in ("device", "threads", "torch") if old_env.get(k) != env.get(k)]
        run_dir.log(f"resumed from {ckpt.path.name} at iteration {trainer.iteration}")
        if moved:
            run_dir.log(
                "warning: resumed with a different "
                + ", ".join(moved)
                + "; results are bit-exact only on the same device, thread count and torch"
            )
        return None
    if skipped and not rt.restart_invalid_checkpoints:
        # a run that had progress never starts over silently
        msg = (
            f"none of its {len(skipped)} checkpoints can be used (see log.txt); move the run "
            "away, or rerun with --restart-invalid-checkpoints to train it again from "
            "iteration 0"
        )
        run_dir.write_status(
            "failed", message=msg, reason="no-valid-checkpoint", iteration=0,
            skipped_checkpoints=skipped,
        )  # fmt: skip
        run_dir.log(f"failed: {msg}")
        return Outcome("failed", 0, msg, run_dir.path)
    again = (
        f" again from iteration 0 over {len(skipped)} unusable checkpoints "
        "(--restart-invalid-checkpoints)"
        if skipped
        else ""
    )
    run_dir.log(
        f"started {run_dir.path.name}{again} on {env['device']} ({env['threads']} threads), "
        f"mode {cfg.mode}, engine {trainer.steps.name}, data placement "
        f"{trainer.batches.placement}"
    )
    return None


def _rows_from(found: Restored, run_dir: RunDir, cfg: RunConfig) -> None:
    """The run's rows from where it starts: cut at a resumed checkpoint's iteration; from
    iteration 0, those of an earlier start kept aside (it had no checkpoint left), and
    said so in the log and on the terminal."""
    if found.checkpoint is None:
        kept = run_dir.set_aside_rows(f"before-restart-{int(time.time())}")
        if kept:
            note = ("no checkpoint to resume from (checkpoints/ empty or missing): trained "
                    f"again from iteration 0; the earlier rows kept in "
                    f"{', '.join(kept)}")  # fmt: skip
            run_dir.log(note)
            print(f"{run_dir.path.name}: {note}", file=sys.stderr)
    run_dir.truncate_stats(found.trainer.iteration)
    run_dir.truncate_heldout(found.trainer.iteration)
    run_dir.keep_valid_metrics(cfg.iters)


def _train_locked(
    cfg: RunConfig,
    rt: RuntimeConfig,
    dataset: ImageDataset,
    run_dir: RunDir,
    device: torch.device,
    stop: StopFlag,
    lease: Lease,
) -> Outcome:
    # -- the judge first: a run without its weights fails before any work
    try:
        evaluator = _evaluator(cfg, rt, dataset, run_dir, device)
    except WeightsError as e:
        run_dir.write_status("failed", message=str(e), reason="inception-weights", iteration=0)
        run_dir.log(f"failed: {e}")
        return Outcome("failed", 0, str(e), run_dir.path)
    # -- numerics, threads, and the FLOPs of one iteration
    configure_numerics(device, cfg.fast)
    if rt.threads is not None:
        torch.set_num_threads(rt.threads)
    env = environment(device)
    # before the Trainer: counting builds its own (CPU) trainer; the real one reseeds everything
    cost = flops.iteration_cost(cfg) if rt.count_flops else None
    peak = flops.peak_tflops(device, flops.mode_precision(cfg.mode))
    # -- resume from the newest usable checkpoint, or start (out of memory here is recorded
    # like out of memory in the loop: its own failure reason, one line)
    try:
        found = _restore(cfg, rt, dataset, run_dir, device)
    except torch.OutOfMemoryError as e:
        msg = out_of_memory(e, cfg, device, "while building the trainer")
        run_dir.write_status("failed", message=msg, reason="out-of-memory", iteration=0)
        run_dir.log(f"failed: {msg}")
        return Outcome("failed", 0, msg, run_dir.path)
    if isinstance(found, Outcome):
        return found
    failed = _start(cfg, rt, run_dir, found, env)
    if failed is not None:
        return failed
    trainer = found.trainer
    _rows_from(found, run_dir, cfg)
    val = heldout_split(rt.data, rt.heldout)
    if val is None and rt.heldout:
        run_dir.log(f"no held-out split in {rt.data}: held-out critic loss not recorded")
    # -- train; a full disk is recorded as a failure and never retried automatically
    try:
        board = Board(board_dir(Path(rt.results), cfg) if rt.tensorboard else None,
                      trainer.iteration, at_end=trainer.iteration == cfg.iters,
                      evaluations=run_dir.read_metrics(), root=Path(rt.results))  # fmt: skip
    except OSError as e:  # no room for event files, or a link: train without them, say so
        note = f"warning: no TensorBoard events ({e.strerror or e})"
        run_dir.log(note)
        print(f"{run_dir.path.name}: {note}", file=sys.stderr)
        board = Board(None, trainer.iteration)
    if trainer.iteration == 0:
        board.config(cfg, run_dir.path.name)
    status = RunStatus(cfg, run_dir, trainer, env, cost, peak, found.skipped, board)
    status("running")
    try:
        return _loop(cfg, rt, run_dir, trainer, stop, lease, env, status, evaluator, val)
    except torch.OutOfMemoryError as e:
        msg = out_of_memory(e, cfg, device, f"at iteration {trainer.iteration}")
        if not lease.lost:
            status.failed(msg, "out-of-memory")
        return Outcome("failed", trainer.iteration, msg, run_dir.path)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            if not lease.lost:
                status.failed(f"{type(e).__name__}: {e}", "exception")
            raise
        msg = f"disk full: {e}" if not isinstance(e, DiskFullError) else f"disk full: {e.strerror}"
        status.failed(msg, "disk-full")
        return Outcome("failed", trainer.iteration, msg, run_dir.path)
    except BaseException as e:
        if not lease.lost:
            status.failed(f"{type(e).__name__}: {e}", "exception")
        raise
    finally:
        board.close()


# --------------------------------------------------------------------------------------------
# side work at an iteration boundary (none of it is training time)
# --------------------------------------------------------------------------------------------
def _save(trainer: Trainer, run_dir: RunDir, cfg: RunConfig, rt: RuntimeConfig,
          env: dict[str, Any], clock: Stopwatch, board: Board) -> float:  # fmt: skip
    """Checkpoint the trainer (its events on disk first); returns when it was saved
    (time.monotonic)."""
    with clock.aside():
        board.flush()
        path = checkpoint.save_checkpoint(
            run_dir.checkpoints_dir,
            trainer.iteration,
            trainer.state_dict(env),
            config_hash=cfg.hash(),
            keep=rt.keep_checkpoints,
        )
    saved = time.monotonic()
    run_dir.log(f"checkpoint {path.name}")
    return saved


def _sample_grid(trainer: Trainer, run_dir: RunDir, clock: Stopwatch, board: Board) -> None:
    with clock.aside():
        image = grid(trainer.samples())
        save_png(image, run_dir.sample_grid(trainer.iteration))
        board.samples(image, trainer.iteration, trainer.train_seconds)


def _heldout(trainer: Trainer, run_dir: RunDir, val: ImageDataset | None, clock: Stopwatch) -> None:
    if val is None:
        return
    with clock.aside():
        run_dir.append_heldout({"iter": trainer.iteration, **trainer.heldout(val)})


def _evaluate(evaluator: Evaluator | None, trainer: Trainer, run_dir: RunDir, clock: Stopwatch,
              kind: str, board: Board) -> None:  # fmt: skip
    if evaluator is None:
        return
    with clock.aside() as t:
        so_far = trainer.train_seconds + clock.elapsed(t)
        row = evaluator.evaluate(trainer.G, trainer.iteration, kind, train_seconds=so_far)
    if row is not None:
        board.evaluation(row)
        name = "IS" if row["judge"] == "inception" else "judge IS"
        modes = (
            f", {row['modes_covered']}/{row['modes_total']} modes" if "modes_covered" in row else ""
        )
        run_dir.log(
            f"{kind} evaluation at iteration {trainer.iteration}: {name} "
            f"{row[metrics.IS_MEAN]:.3f} ± {row[metrics.IS_STD]:.3f}, FID "
            f"{row.get(metrics.FID, float('nan')):.2f}{modes} ({row['seconds']:.1f} s)"
        )


def _progress_bar(cfg: RunConfig, rt: RuntimeConfig, run_dir: RunDir, trainer: Trainer) -> Any:
    tty = sys.stderr.isatty()
    return tqdm(
        total=cfg.iters,
        initial=trainer.iteration,
        unit="it",
        desc=run_dir.path.name,
        disable=not rt.progress,
        mininterval=0.5 if tty else 30.0,
        dynamic_ncols=True,
        file=sys.stderr,
    )


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def _loop(
    cfg: RunConfig,
    rt: RuntimeConfig,
    run_dir: RunDir,
    trainer: Trainer,
    stop: StopFlag,
    lease: Lease,
    env: dict[str, Any],
    status: RunStatus,
    evaluator: Evaluator | None,
    val: ImageDataset | None = None,
) -> Outcome:
    thresholds = metrics.VerdictThresholds(rt.is_threshold, rt.diversity_threshold)
    boundary = Boundary(cfg.iters, rt.checkpoint_every, rt.checkpoint_every_iters)
    clock = Stopwatch()
    bar = _progress_bar(cfg, rt, run_dir, trainer)
    buffer = StatsBuffer(trainer, run_dir, bar, clock, status.board)
    step_sleep = float(faults.value("step-sleep") or 0.0)
    with bar:
        while trainer.iteration < cfg.iters:
            if lease.lost:  # another process took the run over: stop without writing
                run_dir.log("lease lost to another process; stopping without writing")
                return Outcome(
                    "lost", trainer.iteration, "another process took over the run", run_dir.path
                )
            # -- one iteration (a stop overdue in its middle abandons it)
            faults.hold_here(trainer.iteration, stop)
            it, setups, begun = trainer.iteration, trainer.steps.setups, buffer.begin()
            try:
                stats = trainer.step(stop)
            except IterationAbandoned as e:
                return _abandoned(e, it, stop, trainer, run_dir, status)
            # set-up: this iteration compiled or captured a step
            buffer.add(it, stats, begun, trainer.steps.setups != setups)
            bar.update(1)
            if step_sleep:
                time.sleep(step_sleep)
            done = trainer.iteration
            # -- what this boundary owes (the stop flag is read once)
            stopping, due_ckpt = boundary.owes(done, bool(stop))
            # -- statistics (one host sync) and divergence
            if due_ckpt or done % rt.log_every == 0 or done == cfg.iters:
                bad = buffer.flush()
                if bad is not None:
                    return _diverged(bad, run_dir, status, thresholds)
                if done < cfg.iters and not due_ckpt:
                    status("running")  # progress for `status` (after a checkpoint: below)
            # -- samples, held-out loss, periodic evaluation
            if rt.sample_every > 0 and done % rt.sample_every == 0 and done < cfg.iters:
                _sample_grid(trainer, run_dir, clock, status.board)
            if rt.heldout_due(done, cfg.iters):
                _heldout(trainer, run_dir, val, clock)
            if evaluator is not None and evaluator.due(done):
                _evaluate(evaluator, trainer, run_dir, clock, "periodic", status.board)
            # -- checkpoint, then stop if asked
            if due_ckpt and done < cfg.iters:
                boundary.saved(_save(trainer, run_dir, cfg, rt, env, clock, status.board))
                status("running")
                faults.pause_here(done)
            if stopping:
                status("interrupted", message=f"stopped by {stop.reason}")
                run_dir.log(f"interrupted by {stop.reason} at iteration {done}")
                return Outcome("interrupted", done, f"stopped by {stop.reason}", run_dir.path)
    # -- the end: last grid, checkpoint, final evaluation, verdict
    _sample_grid(trainer, run_dir, clock, status.board)
    _save(trainer, run_dir, cfg, rt, env, clock, status.board)  # before the final evaluation
    time.sleep(float(faults.value("eval-sleep") or 0.0))
    _evaluate(evaluator, trainer, run_dir, clock, "final", status.board)
    return _completed(cfg, run_dir, trainer, evaluator, status, thresholds)


def _abandoned(e: IterationAbandoned, it: int, stop: StopFlag, trainer: Trainer,
               run_dir: RunDir, status: RunStatus) -> Outcome:  # fmt: skip
    msg = (
        f"stopped by {stop.reason} during iteration {it} (abandoned after "
        f"{e.critic_steps} of {trainer.hp.n_critic} critic steps, {stop.grace:g} s "
        "after the request); resumes from the newest checkpoint"
    )
    status("interrupted", message=msg)
    run_dir.log(f"interrupted: {msg}")
    return Outcome("interrupted", it, msg, run_dir.path)


def _diverged(at: int, run_dir: RunDir, status: RunStatus,
              thresholds: metrics.VerdictThresholds) -> Outcome:  # fmt: skip
    msg = f"non-finite loss or parameter at iteration {at}"
    write_verdict(run_dir.path, "diverged", thresholds)
    status("diverged", diverged_at=at, message=msg)
    run_dir.log(f"diverged: {msg}; last good checkpoint left untouched")
    return Outcome("diverged", at, msg, run_dir.path)


def _completed(cfg: RunConfig, run_dir: RunDir, trainer: Trainer, evaluator: Evaluator | None,
               status: RunStatus, thresholds: metrics.VerdictThresholds) -> Outcome:  # fmt: skip
    v = write_verdict(run_dir.path, "completed", thresholds)
    status(
        "completed",
        finished_at=time.time(),
        verdict=v["verdict"],
        eval_seconds=evaluator.seconds if evaluator else 0.0,
    )
    setup = (
        f" ({trainer.setup_seconds:.1f} s of it in {trainer.setup_iterations} iterations that "
        "compiled or captured a step)"
        if trainer.setup_iterations
        else ""
    )
    run_dir.log(
        f"completed {cfg.iters} iterations in {trainer.train_seconds:.1f} s of training{setup}"
    )
    return Outcome(
        "completed",
        trainer.iteration,
        "completed",
        run_dir.path,
        {"train_seconds": trainer.train_seconds},
    )
