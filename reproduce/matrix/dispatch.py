"""Dispatch of matrix cells through submitit: local processes, SLURM job arrays, in-process.

One code path: every cell becomes a ``CellJob`` (a submitit ``Checkpointable`` that carries
only the cell's config) handed to a submitit executor. The job rebuilds all state from disk
at every start, so a preempted and requeued job, a plain ``scontrol requeue`` or a rerun of
the original pickle after a node failure all resume from the newest checkpoint.

Preemption and time limits: inside the job, USR2 (submitit's preemption/timeout signal) and
SIGTERM only set a flag. The training loop checkpoints at the next iteration boundary and
returns; for USR2 the job then hands over to submitit's own handler, which re-pickles the job
and requeues it (``scontrol requeue`` on SLURM). SIGTERM (a plain requeue, scancel, or the end
of a preemption grace time) checkpoints and exits; SLURM decides whether the job comes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

from .. import faults
from ..config.run import RunConfig
from ..config.runtime import RuntimeConfig
from ..fileio import atomic_write_json, now_iso
from ..rundir.layout import ResultsDir
from ..rundir.rundir import RunDir
from . import costs


@dataclass(frozen=True)
class CellSpec:
    """Everything a job needs, as plain data (pickled into the submission)."""

    config: dict[str, Any]  # RunConfig fields (kind "gan") or ToyConfig fields (kind "toy")
    runtime: dict[str, Any]  # RuntimeConfig fields (gan) or {checkpoint_every, threads} (toy)
    run_dir: str
    kind: Literal["gan", "toy"] = (
        "gan"  # an image GAN run (training/loop.py) | a 2-D toy run (training/toy.py)
    )
    # local GPU cells: the CUDA_VISIBLE_DEVICES entry of the cell's GPU (an index, a GPU-... or
    # MIG-... UUID), set in the job's process before CUDA starts
    cuda_device: str | None = None

    @property
    def run_id(self) -> str:
        return Path(self.run_dir).name

    @property
    def is_toy(self) -> bool:
        return self.kind == "toy"


class CellJob(submitit.helpers.Checkpointable):
    """Run one cell; resumable. ``checkpoint()`` (inherited) re-submits the same spec: the
    training state always comes from the run directory, never from the pickle."""

    def __init__(self, spec: CellSpec) -> None:
        self.spec = spec

    def __call__(self) -> dict[str, Any]:
        from ..training.stopping import StopFlag  # no torch: installed below before anything heavy

        if self.spec.cuda_device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.spec.cuda_device
        stop = StopFlag()
        # submitit's handler for USR2 checkpoints *inside* the signal handler; keep it for
        # the hand-over after our own clean stop at an iteration boundary.
        usr2 = signal.SIGUSR2
        submitit_handler = signal.getsignal(usr2)
        with stop.installed((usr2, signal.SIGTERM, signal.SIGINT)):
            out = self._toy(stop) if self.spec.is_toy else self._gan(stop)
        if (
            out["state"] == "interrupted"
            and stop.reason == "SIGUSR2"
            and callable(submitit_handler)
        ):
            _clean_stale_save_tmp()
            submitit_handler(usr2, None)  # re-pickles via checkpoint(), requeues, exits
        return out

    def _gan(self, stop: Any) -> dict[str, Any]:
        from ..data.datasets import load_dataset
        from ..training.loop import train_run
        from ..training.trainer import resolve_device

        cfg = RunConfig.from_dict(self.spec.config)
        rt = RuntimeConfig(**self.spec.runtime)
        dataset = load_dataset(rt.data)
        if dataset.fingerprint != cfg.data_fingerprint:
            raise RuntimeError(
                f"dataset {rt.data} changed since submission: fingerprint {dataset.fingerprint}, "
                f"expected {cfg.data_fingerprint}"
            )
        out = train_run(
            cfg, rt, dataset, RunDir(Path(self.spec.run_dir)), resolve_device(rt.device), stop
        )
        return out.to_dict()

    def _toy(self, stop: Any) -> dict[str, Any]:
        from ..training.toy import ToyConfig, run_toy

        rt = self.spec.runtime
        return run_toy(
            ToyConfig(**self.spec.config),
            Path(self.spec.run_dir),
            stop=lambda: bool(stop),
            checkpoint_every=float(rt.get("checkpoint_every", 300.0)),
            threads=rt.get("threads"),
        ).to_dict()


def _clean_stale_save_tmp() -> None:
    """A job killed while submitit re-pickled it leaves ``*.save_tmp``, which makes the next
    requeue fail an assertion; remove it before handing over."""
    with contextlib.suppress(Exception):
        paths = submitit.JobEnvironment().paths
        tmp = paths.submitted_pickle.with_suffix(paths.submitted_pickle.suffix + ".save_tmp")
        tmp.unlink(missing_ok=True)


def submission_folder(results: Path) -> Path:
    """A fresh submitit folder per matrix invocation (job ids may repeat across clusters)."""
    return ResultsDir(results).submitit / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"


def record_submission(run_dir: Path, executor: str, job_id: str, folder: Path) -> None:
    atomic_write_json(
        RunDir(run_dir).submission_file,
        {"executor": executor, "job_id": job_id, "folder": str(folder), "submitted": now_iso()},
    )


# --------------------------------------------------------------------------------------------
# local: GPUs shared by packed cells, or CPU workers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Packing:
    """How many cells share one GPU (``matrix --cells-per-gpu``): ``default`` for every
    architecture, ``per_arch`` where given or measured (``source``: the benchmark file)."""

    default: int = 1
    per_arch: tuple[tuple[str, int], ...] = ()
    source: str | None = None

    def cells(self, arch: str | None) -> int:
        return dict(self.per_arch).get(arch, self.default) if arch else self.default

    @property
    def uniform(self) -> bool:
        return all(k == self.default for _, k in self.per_arch)

    def describe(self) -> str:
        groups: dict[int, list[str]] = {}
        for arch, k in self.per_arch:
            if k != self.default:
                groups.setdefault(k, []).append(arch)
        parts = [f"{k} per GPU for {', '.join(sorted(a))}" for k, a in sorted(groups.items())]
        parts.append(f"{self.default} per GPU" + (" otherwise" if parts else ""))
        source = f" (from {self.source})" if self.source else ""
        return "cells packed " + "; ".join(parts) + source


def visible_device(index: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry of the GPU this process sees as ``index`` (GPU indices
    are this process's, as torch numbers them): with ``CUDA_VISIBLE_DEVICES=2,3``, GPU 1 is
    device ``3``. submitit's own ``visible_gpus`` would hand the cell physical GPU ``1``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return str(index)
    return visible_entries(visible)[index]


def visible_entries(visible: str) -> list[str]:
    """The devices a ``CUDA_VISIBLE_DEVICES`` value names ("" names none)."""
    return [e.strip() for e in visible.split(",")] if visible.strip() else []


@dataclass(frozen=True)
class Slot:
    gpu: int | None  # the device index this slot's cells see as CUDA_VISIBLE_DEVICES; None = CPU
    share: Fraction = Fraction(1)  # of that GPU: 1/k for a cell packed k per GPU


class LocalPool:
    """Where cells may start. Each GPU takes cells whose shares (1/k for an architecture
    packed k per GPU) add up to at most one; without GPUs, ``cpu_workers`` cells at a time.

    Cells are taken largest share first, in matrix order within a share. A cell that does not
    fit reserves the least-loaded GPU for itself until the next scheduling pass, so smaller
    cells behind it cannot keep that GPU from ever emptying."""

    def __init__(self, gpus: Sequence[int], packing: Packing, cpu_workers: int) -> None:
        self.gpus = list(gpus)
        self.packing = packing
        self.cpu_workers = cpu_workers
        self.load = {g: Fraction(0) for g in self.gpus}
        self.cpu_busy = 0

    @property
    def on_cpu(self) -> bool:
        return not self.gpus

    def share(self, spec: CellSpec) -> Fraction:
        arch = None if spec.is_toy else spec.config.get("arch")
        return Fraction(1, self.packing.cells(arch))

    def order(self, specs: Sequence[CellSpec]) -> list[CellSpec]:
        if self.gpus:
            return sorted(specs, key=self.share, reverse=True)
        # on CPUs the longest cells first (measured costs, costs.py), so that the last cells
        # to finish are short ones and no core idles while one long cell runs alone
        return costs.longest_first(specs, lambda s: s.config)

    def schedule(
        self, pending: Sequence[CellSpec]
    ) -> tuple[list[tuple[CellSpec, Slot]], list[CellSpec]]:
        """One pass over the pending cells: (cells that start now with their slots, the rest)."""
        start: list[tuple[CellSpec, Slot]] = []
        wait: list[CellSpec] = []
        reserved: set[int] = set()
        for spec in pending:
            slot = self._acquire(spec, reserved)
            if slot is None:
                wait.append(spec)
                open_gpus = [g for g in self.gpus if g not in reserved]
                if open_gpus:
                    reserved.add(min(open_gpus, key=lambda g: self.load[g]))
            else:
                start.append((spec, slot))
        return start, wait

    def _acquire(self, spec: CellSpec, reserved: set[int]) -> Slot | None:
        if self.on_cpu:
            if self.cpu_busy >= self.cpu_workers:
                return None
            self.cpu_busy += 1
            return Slot(None)
        share = self.share(spec)
        fits = [g for g in self.gpus if g not in reserved and self.load[g] + share <= 1]
        if not fits:
            return None
        gpu = min(fits, key=lambda g: self.load[g])  # spread cells over the GPUs
        self.load[gpu] += share
        return Slot(gpu, share)

    def release(self, slot: Slot) -> None:
        if slot.gpu is None:
            self.cpu_busy -= 1
        else:
            self.load[slot.gpu] -= slot.share


def run_local(
    specs: Sequence[CellSpec],
    pool: LocalPool,
    folder: Path,
    on_event: Callable[[str, CellSpec, Any], None] | None = None,
    poll_s: float = 0.5,
) -> dict[str, dict[str, Any]]:
    """Run cells as local submitit jobs, as many at a time as ``pool`` holds; returns each
    run id's result (or an error description). Interrupting this call cancels the running
    jobs, which checkpoint at their next iteration boundary; how each of them ended (a cell
    in its final evaluation completes) goes to ``on_event`` before the interrupt propagates."""
    pending = pool.order(specs)
    running: list[tuple[Any, CellSpec, Slot]] = []
    results: dict[str, dict[str, Any]] = {}
    try:
        while pending or running:
            start, pending = pool.schedule(pending)
            for spec, slot in start:
                ex = submitit.LocalExecutor(folder=folder, max_num_timeout=0)
                params: dict[str, Any] = {"timeout_min": 60 * 24 * 365}  # no local time limit
                # submitit starts every job with CUDA_VISIBLE_DEVICES="" (no GPU: CPU cells);
                # a GPU cell sets its GPU's entry itself, before CUDA starts. (submitit's
                # visible_gpus would pass a bare index, and takes no UUIDs.)
                job_spec = spec
                if slot.gpu is not None:
                    # its share of the GPU goes with it: packed cells start together and each
                    # sees the whole GPU free, so auto placement counts on 1/k of its memory
                    runtime = spec.runtime
                    if not spec.is_toy:
                        runtime = {**runtime, "share_gpu": slot.share.denominator}
                    job_spec = dataclasses.replace(
                        spec, cuda_device=visible_device(slot.gpu), runtime=runtime
                    )
                ex.update_parameters(**params)
                # submitit's job controller starts with SIGINT blocked (the mask is inherited),
                # so a terminal Ctrl-C reaches only the cell, which unblocks it once its own
                # handler is in place (StopFlag.installed: it checkpoints and exits), instead
                # of making submitit's controller SIGKILL it. Blocked, not ignored: a Ctrl-C
                # meanwhile stays pending, here too, and is raised once the job is in
                # ``running`` (then stopped below), so no Ctrl-C is ever lost.
                previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:
                    job = ex.submit(CellJob(job_spec))
                    running.append((job, spec, slot))
                    record_submission(Path(spec.run_dir), "local", job.job_id, folder)
                    time.sleep(float(faults.value("submit-sleep") or 0.0))
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
                if on_event:
                    on_event("started", spec, slot)
            still = []
            for job, spec, slot in running:
                if job.done():
                    results[spec.run_id] = _job_result(job)
                    pool.release(slot)
                    if on_event:
                        on_event("finished", spec, results[spec.run_id])
                else:
                    still.append((job, spec, slot))
            running = still
            if running:
                time.sleep(poll_s)
    except BaseException:
        stop_local_jobs([job for job, _, _ in running])
        # announce how each stopped cell ended: most checkpoint as "interrupted", but one in
        # its final evaluation completes
        for job, spec, _ in running:
            if job.done():
                results[spec.run_id] = _job_result(job)
                if on_event:
                    with contextlib.suppress(Exception):
                        on_event("finished", spec, results[spec.run_id])
        raise
    return results


def stop_local_jobs(jobs: Sequence[Any], timeout_s: float = 300.0) -> None:
    """SIGTERM each job's controller (forwarded to its cell, which checkpoints at the next
    iteration and exits), then wait for them. submitit's own cancel() sends SIGINT, on which
    the controller SIGKILLs the cell after one second."""
    procs = [p for p in (getattr(j, "_process", None) for j in jobs) if p is not None]
    for p in procs:
        with contextlib.suppress(Exception):
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        with contextlib.suppress(Exception):
            p.wait(timeout=max(0.0, deadline - time.monotonic()))


def _job_result(job: Any) -> dict[str, Any]:
    try:
        return dict(job.result())
    except (FailedJobError, UncompletedJobError) as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        return {"state": "failed", "message": lines[-1] if lines else repr(e)}


def run_debug(specs: Sequence[CellSpec], folder: Path) -> dict[str, dict[str, Any]]:
    """In-process, one cell after the other (submitit's DebugExecutor): for tests."""
    ex = submitit.DebugExecutor(folder=folder)
    results = {}
    for spec in specs:
        job = ex.submit(CellJob(spec))
        results[spec.run_id] = _job_result(job)
    return results


# --------------------------------------------------------------------------------------------
# SLURM: one job array per matrix invocation, settings from a TOML profile under slurm/
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SlurmProfile:
    """Cluster settings for the job array (``slurm/*.toml``; every key documented there)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit_min: int = 24 * 60  # per job; a cell that needs longer requeues itself
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float | None = 32.0
    array_parallelism: int = 64  # cells running at once
    signal_delay_s: int = 120  # USR2 this long before the time limit
    max_requeues: int = 20  # time-limit requeues per cell (preemptions do not count)
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, ...)
    constraint: str | None = None
    exclude: str | None = None
    additional: tuple[tuple[str, Any], ...] = ()  # any other sbatch option, e.g. {mail-type=END}

    def executor_parameters(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            "time": self.time_limit_min,
            "cpus_per_task": self.cpus_per_task,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
        }
        for key in ("partition", "account", "qos", "constraint", "exclude"):
            if getattr(self, key):
                p[key] = getattr(self, key)
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb:
            p["mem"] = f"{int(self.mem_gb * 1024)}M"
        if self.setup:
            p["setup"] = list(self.setup)
        if self.additional:
            p["additional_parameters"] = dict(self.additional)
        return p


def run_slurm(
    specs: Sequence[CellSpec], profile: SlurmProfile, folder: Path
) -> list[tuple[CellSpec, str]]:
    """Submit the cells as one job array; returns (spec, job id) pairs."""
    ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_requeues)
    ex.update_parameters(**profile.executor_parameters())
    with ex.batch():
        jobs = [ex.submit(CellJob(spec)) for spec in specs]
    out = []
    for spec, job in zip(specs, jobs, strict=True):
        record_submission(Path(spec.run_dir), "slurm", job.job_id, folder)
        out.append((spec, job.job_id))
    return out


def slurm_queue() -> dict[str, str] | None:
    """Job id -> state of every job in the queue (array tasks expanded); None if squeue is
    unavailable or the controller does not answer."""
    import subprocess

    try:
        r = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0:
        return None
    queue = {}
    for line in r.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        if job:
            queue[job] = state
    return queue


REPO_SLURM_DIR = Path(__file__).resolve().parents[2] / "slurm"


def _parse_time_limit(value: Any) -> int:
    """Minutes from an int (minutes) or a SLURM string: MM, HH:MM:SS, D-HH:MM[:SS]."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError(value)
    days = 0
    if "-" in value:
        d, value = value.split("-", 1)
        days = int(d)
    parts = [int(x) for x in value.split(":")]
    if len(parts) == 1:
        h, m, s = 0, parts[0], 0
    elif len(parts) == 2:
        h, m, s = (parts[0], parts[1], 0) if days else (0, parts[0], parts[1])
    elif len(parts) == 3:
        h, m, s = parts
    else:
        raise ValueError(value)
    return days * 24 * 60 + h * 60 + m + (1 if s else 0)


SLURM_PROFILE_TYPES: dict[str, tuple[type, ...]] = {
    "partition": (str,),
    "account": (str,),
    "qos": (str,),
    "time_limit": (str, int),
    "gpus_per_node": (int,),
    "cpus_per_task": (int,),
    "mem_gb": (int, float),
    "array_parallelism": (int,),
    "signal_delay_s": (int,),
    "max_requeues": (int,),
    "setup": (list,),
    "constraint": (str,),
    "exclude": (str,),
    "additional": (dict,),
}


def available_slurm_profiles() -> list[str]:
    return sorted(p.stem for p in REPO_SLURM_DIR.glob("*.toml"))


def load_slurm_profile(name: str, overrides: Sequence[str] = ()) -> tuple[SlurmProfile, str]:
    """Read a profile (a file path, or a name under slurm/) and apply KEY=VALUE overrides.
    Unknown keys and wrong types are errors (UserError names the key and the file)."""

    import tomllib

    from ..errors import UserError, did_you_mean

    path = Path(name)
    if not path.is_file():
        path = REPO_SLURM_DIR / f"{name}.toml"
    if not path.is_file():
        avail = available_slurm_profiles()
        hint = did_you_mean(name, avail)
        raise UserError(
            f"--slurm-profile: no profile {name!r}{hint}; available: "
            f"{', '.join(avail) or 'none'} (or give a TOML file)"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"--slurm-profile: cannot parse {path}: {e}") from None
    sources = {k: str(path) for k in raw}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm: expected KEY=VALUE, got {item!r}")
        try:
            raw[key] = tomllib.loads(f"v = {text}")["v"]
        except ValueError:
            raw[key] = text  # a bare word: a string
        sources[key] = "--slurm"
    values: dict[str, Any] = {}
    value: Any
    for key, value in raw.items():
        if key not in SLURM_PROFILE_TYPES:
            hint = did_you_mean(key, SLURM_PROFILE_TYPES)
            raise UserError(f"{sources[key]}: unknown SLURM profile key {key!r}{hint}")
        types = SLURM_PROFILE_TYPES[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserError(
                f"{sources[key]}: SLURM profile key {key!r} must be "
                f"{' or '.join(t.__name__ for t in types)}, got {value!r}"
            )
        if key == "time_limit":
            try:
                values["time_limit_min"] = _parse_time_limit(value)
            except ValueError:
                raise UserError(
                    f"{sources[key]}: time_limit {value!r} is not minutes or [D-]HH:MM[:SS]"
                ) from None
        elif key in ("partition", "account", "qos", "constraint", "exclude"):
            values[key] = value or None  # "" means "not set"
        elif key == "setup":
            values[key] = tuple(str(x) for x in cast(list[object], value))
        elif key == "additional":
            values[key] = tuple(sorted(cast(dict[str, object], value).items()))
        else:
            values[key] = value
    profile = SlurmProfile(**values)
    for key in ("gpus_per_node", "signal_delay_s", "max_requeues"):
        if getattr(profile, key) < 0:
            raise UserError(f"SLURM profile: {key} must be >= 0, got {getattr(profile, key)}")
    for key in ("cpus_per_task", "array_parallelism", "time_limit_min"):
        if getattr(profile, key) < 1:
            raise UserError(f"SLURM profile: {key} must be >= 1, got {getattr(profile, key)}")
    return profile, str(path)
