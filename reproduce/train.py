"""The one training loop for all four procedures (SPEC.md B.2).

For iteration 0 .. iters-1: one generator step (skipped at iteration 0), then ``n_critic``
critic steps, each on a fresh real batch and fresh noise. The loop contains no loss maths (see
procedures.py); it runs the schedule, toggles ``requires_grad_``, steps the optimisers, records
statistics, draws fixed-noise sample grids, checkpoints and stops cleanly.

Statistics stay on the device and are read every ``log_every`` iterations (one host sync), so
the hot loop never waits for the GPU; every iteration still gets its own row in stats.jsonl.
Divergence (a non-finite loss or parameter) is found at those reads and before every
checkpoint, so a checkpoint never holds a diverged state.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import platform
import random
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from architectures import Z_DIM, get_pair

from . import checkpoint, faults, flops, judge, metrics, steps
from .config import SCHEMA_VERSION, RunConfig, RuntimeConfig, config_diff, upgrade_config
from .data import (
    BatchSource,
    DataPosition,
    ImageDataset,
    derive_seed,
    load_split_if_any,
    scale_images,
)
from .errors import DiskFullError
from .evaluation import Evaluator, write_verdict
from .images import grid, save_png, to_uint8
from .lease import Lease
from .procedures import Procedure, get_procedure
from .results import TERMINAL_STATES, RunDir, atomic_write_json
from .stopping import STOP_GRACE_S as STOP_GRACE_S
from .stopping import StopFlag as StopFlag

N_FIXED_SAMPLES = 64  # the 8x8 fixed-noise grid (SPEC.md B.5)


# --------------------------------------------------------------------------------------------
# stopping on signals: the handler only sets a flag; the loop checkpoints at the next boundary
# --------------------------------------------------------------------------------------------
# StopFlag lives in stopping.py (no torch): a matrix cell installs it before anything heavy
# is imported, so no signal reaches the process while only submitit's handlers are in place


class IterationAbandoned(Exception):
    """A stop request outlived its grace time in the middle of an iteration."""

    def __init__(self, iteration: int, critic_steps: int) -> None:
        super().__init__(f"iteration {iteration} abandoned after {critic_steps} critic steps")
        self.iteration, self.critic_steps = iteration, critic_steps


@dataclass
class Outcome:
    """How a call to ``train_run`` ended.

    state: completed | diverged | interrupted | failed (the run's status) or, without touching
    the run: already-completed | already-diverged | busy (another live process holds it) |
    lost (another process took the run over while we trained).
    """

    state: str
    iteration: int
    message: str
    run_dir: Path
    stats: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# environment and RNG state
# --------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def configure_numerics(device: torch.device, mode: str = "exact") -> None:
    """Exact mode: fp32 everywhere, no TF32, deterministic cuDNN (SPEC.md: faithful numerics).
    Fast modes: TF32 matmuls and convolutions, cuDNN's autotuner."""
    fast = mode != "exact"
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.set_float32_matmul_precision("high" if fast else "highest")
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = not fast
        torch.backends.cudnn.benchmark = fast


def make_steps(
    trainer: Trainer, cuda_graphs: bool | None = None, compile_mode: str = "default"
) -> steps.EagerSteps:
    """The engine for this run: compiled under the fast modes; CUDA graphs for exact runs on a
    CUDA device (unless ``cuda_graphs`` is False); eager otherwise."""
    t = trainer
    args = (t.G, t.D, t.proc, t.hp, t.opt_g, t.opt_d)
    if t.cfg.fast:
        return steps.CompiledSteps(
            *args, device=t.device, bf16=t.cfg.mode == "fast-bf16", compile_mode=compile_mode
        )
    if t.device.type == "cuda" and cuda_graphs is not False:
        pair = get_pair(t.cfg.arch)
        return steps.GraphedSteps(
            *args,
            batch_size=t.cfg.batch_size,
            image_shape=(3, pair.resolution, pair.resolution),
            z_dim=Z_DIM,
            device=t.device,
            penalty=t.proc.uses_penalty,
        )
    return steps.EagerSteps(*args)


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda) if torch.version.cuda else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def rng_state() -> dict[str, Any]:
    """Every RNG stream, as plain types and tensors (loadable with weights_only=True)."""
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    py = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {
            "key": str(np_state[0]),
            "state": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py[0], list(py[1]), py[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["key"],
            n["state"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


# --------------------------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Owns the networks, optimisers, data position and statistics of one run."""

    def __init__(
        self,
        cfg: RunConfig,
        dataset: ImageDataset,
        device: torch.device,
        data_placement: str = "auto",
        cuda_graphs: bool | None = None,
        compile_mode: str = "default",
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.proc: Procedure = get_procedure(cfg.procedure)
        self.hp = cfg.hyperparameters
        pair = get_pair(cfg.arch)
        # Weights are initialised on the CPU from the run seed (identical on every device).
        seed_everything(cfg.seed)
        self.G: nn.Module = pair.generator(cfg.dim, cfg.padding, cfg.mlp_width).to(device)
        self.D: nn.Module = pair.critic(cfg.dim, cfg.critic_norm, cfg.padding).to(device)
        fused = cfg.fast and self.hp.optimizer == "adam-torch"
        self.opt_g = self.proc.make_optimizer(self.G.parameters(), self.hp, fused=fused)
        self.opt_d = self.proc.make_optimizer(self.D.parameters(), self.hp, fused=fused)
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "fixed-noise"))
        self.fixed_noise = torch.randn(N_FIXED_SAMPLES, Z_DIM, generator=g).to(device)  # (64, 128)
        self.batches = BatchSource(
            dataset, cfg.batch_size, cfg.seed, device, placement=data_placement
        )
        self.iteration = 0  # generator iterations done
        self.train_seconds = 0.0  # cumulative training time, excluding checkpoints and samples
        # the part of it spent in iterations that compiled or captured a step (all processes)
        self.setup_seconds = 0.0
        self.setup_iterations = 0
        self.stat_keys = ["critic_loss", "wdist", "d_real", "d_fake"]
        if self.proc.uses_penalty:
            self.stat_keys.append("gp")
        self.steps = make_steps(self, cuda_graphs, compile_mode)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self, env: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": 1,
            "iteration": self.iteration,
            "generator": self.G.state_dict(),
            "critic": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "data": self.batches.position.to_dict(),
            "rng": rng_state(),
            "fixed_noise": self.fixed_noise.cpu(),
            "train_seconds": self.train_seconds,
            "setup_seconds": self.setup_seconds,
            "setup_iterations": self.setup_iterations,
            "config_hash": self.cfg.hash(),
            "config": self.cfg.to_dict(),
            "env": env,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["critic"])
        if not faults.active("skip-restore", "optimizer"):
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        if not faults.active("skip-restore", "data"):
            self.batches.sampler.position = DataPosition(**state["data"])
        if not faults.active("skip-restore", "rng"):
            set_rng_state(state["rng"])
        self.fixed_noise = state["fixed_noise"].to(self.device)
        self.iteration = int(state["iteration"])
        self.train_seconds = float(state["train_seconds"])
        self.setup_seconds = float(state.get("setup_seconds", 0.0))  # absent before they were kept
        self.setup_iterations = int(state.get("setup_iterations", 0))

    # -- one generator iteration ---------------------------------------------------------------
    def step(self, stop: StopFlag | None = None) -> dict[str, Tensor]:
        """Run iteration ``self.iteration``; returns its statistics as device tensors. Raises
        ``IterationAbandoned`` between critic steps when ``stop`` is overdue (the trainer's
        state is then part-way through an iteration: never save it)."""
        cfg, hp, proc, dev = self.cfg, self.hp, self.proc, self.device
        critic_sleep = float(faults.value("critic-sleep") or 0.0)
        it = self.iteration
        stats: dict[str, Tensor] = {}
        if it > 0:  # generator step first, skipped at iteration 0 (the authors' order)
            z = torch.randn(cfg.batch_size, Z_DIM, device=dev)  # (B, 128)
            stats.update(self.steps.generator(z))  # critic frozen during the generator step
        critic: dict[str, Tensor] = {}
        for k in range(hp.n_critic):
            if stop is not None and stop.overdue():
                raise IterationAbandoned(it, k)
            real = self.batches.next()  # (B, 3, 64, 64), a fresh batch per critic step
            if faults.active("nan", it):
                real = real * float("nan")
            z = torch.randn(cfg.batch_size, Z_DIM, device=dev)
            alpha = torch.rand(cfg.batch_size, 1, 1, 1, device=dev) if proc.uses_penalty else None
            critic = self.steps.critic(real, z, alpha)
            if critic_sleep:
                time.sleep(critic_sleep)
        stats.update(critic)  # the last critic step's values (as the authors log them)
        self.iteration += 1
        return stats

    def heldout(self, val: ImageDataset) -> dict[str, float]:
        """The critic loss (penalty included) and its parts on a held-out batch, at the
        current weights, without updating anything (Figure 5a). Batch, noise and interpolation
        come from a generator seeded by (seed, iteration), never from the training streams,
        so computing it changes no training number and a resume recomputes the same value."""
        cfg, dev = self.cfg, self.device
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout", self.iteration))
        idx = torch.randint(0, len(val), (cfg.batch_size,), generator=g)
        real = scale_images(val.images[idx].to(dev))
        z = torch.randn(cfg.batch_size, Z_DIM, generator=g).to(dev)
        alpha = (
            torch.rand(cfg.batch_size, 1, 1, 1, generator=g).to(dev)
            if self.proc.uses_penalty
            else None
        )
        res = self.proc.critic_step(self.G, self.D, real, z, alpha, self.hp)
        keys = list(res.stats)
        values = torch.stack([res.stats[k] for k in keys]).tolist()  # one host sync
        return dict(zip(keys, values, strict=True))

    @torch.no_grad()
    def samples(self) -> Tensor:
        """(64, 3, 64, 64) uint8 from the fixed noise, batch-statistics BN as in training."""
        return to_uint8(self.G(self.fixed_noise)).cpu()

    def parameters_finite(self) -> bool:
        params = [p.detach() for m in (self.G, self.D) for p in m.parameters()]
        return bool(torch.stack([p.isfinite().all() for p in params]).all())


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------
def steady_rate(trainer: Trainer) -> float | None:
    """Generator iterations per second of training, leaving out the iterations that compiled
    or captured a step (a one-off cost, kept in ``train_seconds`` and so in GPU-hours): the
    rate the run settles at, which MFU and time estimates use. None until it is measurable."""
    iters = trainer.iteration - trainer.setup_iterations
    secs = trainer.train_seconds - trainer.setup_seconds
    return iters / secs if iters > 0 and secs > 0 else None


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
    run_dir.path.mkdir(parents=True, exist_ok=True)
    lease = Lease(run_dir.path)
    if not lease.acquire():
        return Outcome(
            "busy", 0, f"{run_dir.path} is being trained by another process", run_dir.path
        )
    with lease:
        linked = run_dir.linked_files()
        if linked:  # checked before submission too; re-checked under the lease
            return Outcome(
                "failed", 0, f"{run_dir.path} holds symbolic links ({', '.join(linked[:3])}); "
                "a run's files are never written through links", run_dir.path,
            )  # fmt: skip
        status = run_dir.read_status() or {}
        if status.get("state") in TERMINAL_STATES:
            return Outcome(
                f"already-{status['state']}",
                int(status.get("iteration", 0)),
                f"run {run_dir.path.name} already {status['state']}; nothing to do",
                run_dir.path,
            )
        doc = run_config_document(cfg, rt, dataset, run_dir.path.name)
        if run_dir.exists():
            old = run_dir.read_config()["config"]
            if old != doc["config"]:  # validated before; re-checked under the lease
                diff = "; ".join(config_diff(old, doc["config"]))
                return Outcome(
                    "failed", 0, f"config differs from {run_dir.config_file}: {diff}", run_dir.path
                )
        else:
            atomic_write_json(run_dir.config_file, doc)
        return _train_locked(cfg, rt, dataset, run_dir, device, stop, lease)


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


def _train_locked(
    cfg: RunConfig,
    rt: RuntimeConfig,
    dataset: ImageDataset,
    run_dir: RunDir,
    device: torch.device,
    stop: StopFlag,
    lease: Lease,
) -> Outcome:
    evaluator = None
    if rt.eval_enabled:
        try:
            weights: metrics.InceptionWeights | judge.Judge
            if rt.judge_kind == "demo":
                weights, how = judge.resolve_judge(run_dir.log)
                run_dir.log(f"demo judge {how}: {weights.path} (sha256 {weights.sha256[:16]}...)")
            else:
                weights = _job_weights(rt)
        except WeightsError as e:
            run_dir.write_status("failed", message=str(e), reason="inception-weights", iteration=0)
            run_dir.log(f"failed: {e}")
            return Outcome("failed", 0, str(e), run_dir.path)
        evaluator = Evaluator(cfg, rt, dataset, run_dir, device, weights)
    configure_numerics(device, cfg.mode)
    if rt.threads is not None:
        torch.set_num_threads(rt.threads)
    env = environment(device)
    # before the Trainer: counting builds its own (CPU) trainer; the real one reseeds everything
    cost = flops.iteration_cost(cfg) if rt.count_flops else None
    peak = flops.peak_tflops(device, flops.mode_precision(cfg.mode))
    trainer = Trainer(cfg, dataset, device, rt.data_placement, rt.cuda_graphs, rt.compile_mode)
    engine = trainer.steps.name
    ckpt_dir = run_dir.checkpoints_dir
    for orphan in checkpoint.remove_orphans(ckpt_dir):
        run_dir.log(f"removed incomplete checkpoint write {orphan.name}")
    resumed: tuple[checkpoint.Checkpoint, dict[str, Any]] | None = None
    skipped: list[dict[str, str | None]] = []
    unusable: list[Path] = []
    for ckpt, state, why in checkpoint.candidates(ckpt_dir, map_location=device):
        if state is not None and state.get("config_hash") != cfg.hash():
            if isinstance(state.get("config"), dict):
                diff = "; ".join(config_diff(upgrade_config(state["config"]), cfg.to_dict()))
                msg = f"checkpoint {ckpt.path} has another config: {diff}"
                return Outcome("failed", 0, msg, run_dir.path)
            why, state = "holds no config", None
        if state is not None:
            try:
                trainer.load_state_dict(state)
                resumed = (ckpt, state)
                break
            except Exception as e:  # wrong keys or shapes: the trainer may be half-loaded
                why = f"does not fit this run ({checkpoint.reason(e)})"
                trainer = Trainer(
                    cfg, dataset, device, rt.data_placement, rt.cuda_graphs, rt.compile_mode
                )
        skipped.append({"checkpoint": ckpt.path.name, "reason": why})
        unusable.append(ckpt.path)
        run_dir.log(f"skipped checkpoint {ckpt.path.name}: {why}")
    if resumed is not None or rt.restart_invalid_checkpoints:
        for path in unusable:  # out of the way of the checkpoints this run will write
            run_dir.log(f"moved {path.name} aside to {checkpoint.set_aside(path).name}")
    if resumed is not None:
        ckpt, loaded = resumed
        old_env = loaded["env"] if isinstance(loaded.get("env"), dict) else {}
        moved = [k for k in ("device", "threads", "torch") if old_env.get(k) != env.get(k)]
        run_dir.log(f"resumed from {ckpt.path.name} at iteration {trainer.iteration}")
        if moved:
            run_dir.log(
                "warning: resumed with a different "
                + ", ".join(moved)
                + "; results are bit-exact only on the same device, thread count and torch"
            )
    elif skipped and not rt.restart_invalid_checkpoints:
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
    else:
        again = (
            f" again from iteration 0 over {len(skipped)} unusable checkpoints "
            "(--restart-invalid-checkpoints)"
            if skipped
            else ""
        )
        run_dir.log(
            f"started {run_dir.path.name}{again} on {env['device']} ({env['threads']} threads), "
            f"mode {cfg.mode}, engine {engine}, data placement {trainer.batches.placement}"
        )
    run_dir.truncate_stats(trainer.iteration)
    run_dir.truncate_heldout(trainer.iteration)
    val = load_split_if_any(rt.data, "val") if rt.heldout is not False else None
    if val is None and rt.heldout:
        run_dir.log(f"no held-out split in {rt.data}: held-out critic loss not recorded")

    started_at = time.time()
    start_iteration = trainer.iteration

    def status(state: str, **extra: Any) -> None:
        it_per_s = steady_rate(trainer)
        speed: dict[str, Any] = {
            "peak_tflops": peak,
            "peak_precision": flops.mode_precision(cfg.mode),
        }
        if cost is not None:
            speed |= cost.to_dict() | flops.utilisation(cost.flops, it_per_s, peak)
        run_dir.write_status(
            state,
            iteration=trainer.iteration,
            iters=cfg.iters,
            train_seconds=trainer.train_seconds,
            setup_seconds=trainer.setup_seconds,
            setup_iterations=trainer.setup_iterations,
            it_per_s=it_per_s,
            **speed,
            device=env["device"],
            mode=cfg.mode,
            engine=trainer.steps.name,
            data_placement=trainer.batches.placement,
            host=env["host"],
            pid=os.getpid(),
            cuda_visible_devices=env["cuda_visible_devices"],
            slurm_job=env["slurm_job"],
            started_at=started_at,  # this process's start (epoch seconds)
            start_iteration=start_iteration,  # where this process started (resumed) from
            skipped_checkpoints=skipped,  # unusable checkpoints this process passed over
            **extra,
        )

    def record_failure(msg: str, reason: str) -> None:
        # best effort: on a full disk even these small writes may fail
        with contextlib.suppress(OSError):
            status("failed", message=msg, reason=reason)
        with contextlib.suppress(OSError):
            run_dir.log(f"failed: {msg}")

    status("running")
    try:
        return _loop(cfg, rt, run_dir, trainer, stop, lease, env, status, evaluator, val)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            if not lease.lost:
                record_failure(f"{type(e).__name__}: {e}", "exception")
            raise
        # a full disk is an infrastructure failure: recorded, never retried automatically
        msg = f"disk full: {e}" if not isinstance(e, DiskFullError) else f"disk full: {e.strerror}"
        record_failure(msg, "disk-full")
        return Outcome("failed", trainer.iteration, msg, run_dir.path)
    except BaseException as e:
        if not lease.lost:
            record_failure(f"{type(e).__name__}: {e}", "exception")
        raise


def _loop(
    cfg: RunConfig,
    rt: RuntimeConfig,
    run_dir: RunDir,
    trainer: Trainer,
    stop: StopFlag,
    lease: Lease,
    env: dict[str, Any],
    status: Any,
    evaluator: Evaluator | None,
    val: ImageDataset | None = None,
) -> Outcome:
    # (iteration, stats, seconds, set-up), timings counted once the window is flushed
    pending: list[tuple[int, dict[str, Tensor], float, bool]] = []
    noted: list[str] = []  # engine notes already logged
    thresholds = metrics.VerdictThresholds(rt.is_threshold, rt.diversity_threshold)
    nan = torch.tensor(float("nan"), device=trainer.device)
    last_ckpt = time.monotonic()
    window_start = time.perf_counter()
    window_excluded = 0.0  # seconds spent on samples/checkpoints inside the timing window
    tty = sys.stderr.isatty()
    bar = tqdm(
        total=cfg.iters,
        initial=trainer.iteration,
        unit="it",
        desc=run_dir.path.name,
        disable=not rt.progress,
        mininterval=0.5 if tty else 30.0,
        dynamic_ncols=True,
        file=sys.stderr,
    )

    def flush() -> int | None:
        """Read pending statistics (one host sync), write their rows, and return the first
        iteration with a non-finite loss or parameter (None if all are finite)."""
        nonlocal window_start, window_excluded
        if not pending:
            return None
        keys = [*trainer.stat_keys, "generator_loss"]
        values = torch.stack(
            [torch.stack([s.get(k, nan) for k in keys]) for _, s, _, _ in pending]
        ).tolist()  # (n, len(keys)): the only device->host read of the statistics
        now = time.perf_counter()
        trainer.train_seconds += now - window_start - window_excluded
        for _, _, secs, setup in pending:
            if setup:
                trainer.setup_seconds += secs
                trainer.setup_iterations += 1
        window_start, window_excluded = now, 0.0
        rows, diverged_at = [], None
        for (it, _, secs, _), vals in zip(pending, values, strict=True):
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
        run_dir.append_stats(rows)
        if trainer.steps.note and not noted:
            noted.append(trainer.steps.note)
            run_dir.log(f"warning: {trainer.steps.note}")
        last = rows[-1]
        bar.set_postfix(
            {
                k: f"{last[k]:.3g}"
                for k in ("critic_loss", "wdist", "generator_loss")
                if last.get(k) is not None
            },
            refresh=False,
        )
        pending.clear()
        return diverged_at

    def save() -> None:
        nonlocal last_ckpt, window_excluded
        t = time.perf_counter()
        path = checkpoint.save_checkpoint(
            run_dir.checkpoints_dir,
            trainer.iteration,
            trainer.state_dict(env),
            config_hash=cfg.hash(),
            keep=rt.keep_checkpoints,
        )
        window_excluded += time.perf_counter() - t
        last_ckpt = time.monotonic()
        run_dir.log(f"checkpoint {path.name}")

    def sample_grid() -> None:
        nonlocal window_excluded
        t = time.perf_counter()
        save_png(grid(trainer.samples()), run_dir.samples_dir / f"iter-{trainer.iteration:07d}.png")
        window_excluded += time.perf_counter() - t

    def evaluate(kind: str) -> None:
        nonlocal window_excluded
        if evaluator is None:
            return
        t = time.perf_counter()
        so_far = trainer.train_seconds + (t - window_start - window_excluded)
        row = evaluator.evaluate(trainer.G, trainer.iteration, kind, train_seconds=so_far)
        window_excluded += time.perf_counter() - t
        if row is not None:
            name = "IS" if row["judge"] == "inception" else "judge IS"
            modes = (
                f", {row['modes_covered']}/{row['modes_total']} modes"
                if "modes_covered" in row
                else ""
            )
            run_dir.log(
                f"{kind} evaluation at iteration {trainer.iteration}: {name} "
                f"{row[metrics.IS_MEAN]:.3f} ± {row[metrics.IS_STD]:.3f}, FID "
                f"{row.get(metrics.FID, float('nan')):.2f}{modes} ({row['seconds']:.1f} s)"
            )

    heldout_every = rt.heldout_interval(cfg.iters)

    def heldout() -> None:
        nonlocal window_excluded
        if val is None:
            return
        t = time.perf_counter()
        row = {"iter": trainer.iteration, **trainer.heldout(val)}
        run_dir.append_heldout(row)
        window_excluded += time.perf_counter() - t

    def diverged(at: int) -> Outcome:
        msg = f"non-finite loss or parameter at iteration {at}"
        write_verdict(run_dir.path, "diverged", thresholds)
        status("diverged", diverged_at=at, message=msg)
        run_dir.log(f"diverged: {msg}; last good checkpoint left untouched")
        return Outcome("diverged", at, msg, run_dir.path)

    step_sleep = float(faults.value("step-sleep") or 0.0)
    with bar:
        while trainer.iteration < cfg.iters:
            if lease.lost:
                run_dir.log("lease lost to another process; stopping without writing")
                return Outcome(
                    "lost", trainer.iteration, "another process took over the run", run_dir.path
                )
            it = trainer.iteration
            setups = trainer.steps.setups
            t0 = time.perf_counter()
            try:
                stats = trainer.step(stop)
            except IterationAbandoned as e:
                msg = (
                    f"stopped by {stop.reason} during iteration {it} (abandoned after "
                    f"{e.critic_steps} of {trainer.hp.n_critic} critic steps, {stop.grace:g} s "
                    "after the request); resumes from the newest checkpoint"
                )
                status("interrupted", message=msg)
                run_dir.log(f"interrupted: {msg}")
                return Outcome("interrupted", it, msg, run_dir.path)
            secs = time.perf_counter() - t0
            # set-up: this iteration compiled or captured a step
            pending.append((it, stats, secs, trainer.steps.setups != setups))
            bar.update(1)
            if step_sleep:
                time.sleep(step_sleep)
            done = trainer.iteration
            # read the flag once: a signal that arrives later is handled at the next boundary
            # (reading it twice could stop without the checkpoint); at the last iteration the
            # run simply completes, which saves anyway
            stopping = bool(stop) and done < cfg.iters
            due_ckpt = (
                stopping
                or (rt.checkpoint_every > 0 and time.monotonic() - last_ckpt >= rt.checkpoint_every)
                or (rt.checkpoint_every_iters > 0 and done % rt.checkpoint_every_iters == 0)
            )
            if due_ckpt or done % rt.log_every == 0 or done == cfg.iters:
                bad = flush()
                if bad is not None:
                    return diverged(bad)
                if done < cfg.iters and not due_ckpt:
                    status("running")  # progress for `status` (after a checkpoint: below)
            if rt.sample_every > 0 and done % rt.sample_every == 0 and done < cfg.iters:
                sample_grid()
            if done % heldout_every == 0 or done == cfg.iters:
                heldout()
            if evaluator is not None and evaluator.due(done):
                evaluate("periodic")
            if due_ckpt and done < cfg.iters:
                save()
                status("running")
            if stopping:
                status("interrupted", message=f"stopped by {stop.reason}")
                run_dir.log(f"interrupted by {stop.reason} at iteration {done}")
                return Outcome("interrupted", done, f"stopped by {stop.reason}", run_dir.path)
    sample_grid()
    save()  # before the final evaluation: a failure there never costs training
    time.sleep(float(faults.value("eval-sleep") or 0.0))
    evaluate("final")
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
