"""``reproduce matrix``: plan the cells of an experiment (profile, selection, packing, checks of
existing runs and disk space), then run them here (local pool, debug) or submit them to SLURM,
and print the summary."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from architectures import ALL_PAIRS, get_pair

from .. import faults
from ..config.options import OPTIONS_BY_KEY, SEED_MAX, check_range
from ..config.run import (
    RunConfig,
    resolve_runtime_config,
)
from ..config.runtime import RuntimeConfig, usable_cpus
from ..errors import UserError
from ..fileio import check_writable
from ..gan.procedures import PROCEDURES
from ..rundir.rundir import RunDir
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TEMPFAIL,
    Executor,
    Parser,
    add_dispatch_options,
    add_run_options,
    check_enough_images,
    check_existing_run,
    check_resolution,
    get_executor,
    given_options,
    subcommand,
    with_weights,
)
from .execute import Execution, execute

if TYPE_CHECKING:
    from ..data.datasets import ImageDataset


@dataclass(frozen=True)
class MatrixRequest:
    """What a matrix invocation asks for, typed: ``matrix`` makes one from its arguments
    (``from_args``), ``figures`` one per figure that needs matrix cells."""

    experiment: str
    profile: str
    options: dict[str, Any]  # the options given (flags, --config file), by options.OPTIONS key
    archs: list[str] | None = None  # None: every architecture of the experiment
    procedures: list[str] | None = None
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    executor: str = "local"
    gpus: str | None = None
    cells_per_gpu: str = "1"
    workers: int | None = None
    slurm_profile: str = "default"
    slurm_overrides: list[str] = dataclasses.field(default_factory=list)
    dry_run: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MatrixRequest:
        return cls(
            experiment=args.experiment, profile=args.profile, options=given_options(args),
            archs=args.archs, procedures=args.procedures, seeds=args.seeds,
            executor=args.executor, gpus=args.gpus, cells_per_gpu=args.cells_per_gpu,
            workers=args.workers, slurm_profile=args.slurm_profile,
            slurm_overrides=args.slurm_overrides, dry_run=args.dry_run,
        )  # fmt: skip


@dataclass
class MatrixPlan:
    experiment: str
    configs: list[RunConfig]
    run_dirs: list[Path]
    states: list[Any]  # matrix.CellState
    rt: RuntimeConfig
    dataset: ImageDataset
    executor: Executor
    results: Path
    pool: Any  # dispatch.LocalPool (local)
    slurm: Any  # dispatch.SlurmProfile (slurm)


MAX_WORKERS = 1024  # cells at once on one machine's CPUs


def parse_gpus(text: str | None) -> list[int]:
    """--gpus: a comma list, 'none', or (default) every visible GPU."""
    import torch

    if text is None:
        return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    if text.strip().lower() in ("", "none"):
        return []
    try:
        gpus = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(
            f"--gpus: expected a comma-separated list of GPU indices, got {text!r}"
        ) from None
    if len(set(gpus)) != len(gpus) or min(gpus) < 0:
        raise UserError(f"--gpus: indices must be distinct and >= 0, got {text!r}")
    if not torch.cuda.is_available() and not faults.active("fake-gpus"):
        raise UserError(
            f"--gpus: torch sees no CUDA GPU on this machine, got {text!r}; leave --gpus out "
            "(or give 'none') to train on the CPU"
        )
    if torch.cuda.is_available() and max(gpus) >= torch.cuda.device_count():
        raise UserError(
            f"--gpus: this machine shows {torch.cuda.device_count()} GPU(s) (indices from 0), "
            f"got {text!r}"
        )
    from ..matrix.dispatch import visible_entries

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = len(visible_entries(visible)) if visible is not None else None
    if count is not None and max(gpus) >= count:
        raise UserError(
            f"--gpus: indices count the GPUs of CUDA_VISIBLE_DEVICES={visible!r} "
            f"({count} of them, from 0), got {text!r}"
        )
    return gpus


def parse_packing(
    text: str, gpus: Sequence[int], executor: Executor, results: Path, sizes: set[tuple[int, int]]
) -> Any:
    """--cells-per-gpu -> dispatch.Packing: N; ARCH=N,... (a bare N sets the rest); 'auto'
    (the newest packing benchmark of this GPU model under RESULTS/benchmarks/, measured at the
    cells' width and batch size ``sizes``); or a benchmark FILE.json."""
    from ..matrix.dispatch import Packing

    flag = "--cells-per-gpu"
    text = str(text).strip()
    if text == "1":
        return Packing()
    if not executor.local:
        raise UserError(f"{flag}: packs cells of the local executor, not the {executor.name} one")
    if not gpus:
        raise UserError(
            f"{flag}: no GPU to pack cells on (none visible, or --gpus none); "
            "on a CPU, --workers sets how many cells run at once"
        )
    if text == "auto" or text.endswith(".json"):
        from ..matrix.packing import packing_from_benchmark

        return packing_from_benchmark(text, gpus, results, sizes, flag)
    default, per_arch = 1, {}
    for item in (x.strip() for x in text.split(",")):
        name, _, value = item.rpartition("=")
        try:
            k = int(value)
        except ValueError:
            raise UserError(
                f"{flag}: expected N, ARCH=N,..., auto or a benchmark FILE.json, got {item!r}"
            ) from None
        if k < 1:
            raise UserError(f"{flag}: must be at least 1, got {item}")
        if not name:
            default = k
            continue
        try:
            get_pair(name)
        except KeyError as e:
            raise UserError(f"{flag}: {e.args[0]}") from None
        per_arch[name] = k
    return Packing(default, tuple(sorted(per_arch.items())))


def _check_selection(args: MatrixRequest) -> None:
    for flag, names, registry in (("--arch", args.archs, ALL_PAIRS),
                                  ("--procedure", args.procedures, PROCEDURES)):  # fmt: skip
        for name in names or ():
            if name not in registry:
                raise UserError(f"{flag}: {registry.unknown(name)}")
    for seed in args.seeds:
        if seed < 0:
            raise UserError(f"--seeds: must be >= 0, got {seed}")
        check_range("--seeds", seed, SEED_MAX)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {args.workers}")
    if args.workers is not None:
        check_range("--workers", args.workers, MAX_WORKERS)


def _slurm_profile_and_queue(
    args: MatrixRequest, executor: Executor, rt: RuntimeConfig, run_dirs: list[Path]
) -> tuple[Any, dict[str, str] | None]:
    """The SLURM profile (slurm executor) and the queue the cells' states depend on."""
    from ..matrix.dispatch import load_slurm_profile, slurm_queue

    if not executor.slurm:
        submitted = any(RunDir(d).submission_file.exists() for d in run_dirs)
        return None, slurm_queue() if submitted else None
    slurm, source = load_slurm_profile(args.slurm_profile, args.slurm_overrides)
    need = rt.checkpoint_every + slurm.signal_delay_s
    if slurm.time_limit_min * 60 <= need:
        raise UserError(
            f"{source}: time_limit {slurm.time_limit_min} min is shorter than one checkpoint "
            f"interval ({rt.checkpoint_every:.0f} s, --checkpoint-every) plus the signal delay "
            f"({slurm.signal_delay_s} s): a job could never save its progress"
        )
    if args.dry_run:
        return slurm, None
    queue = slurm_queue()
    if queue is None:
        raise UserError(
            "--executor slurm: no SLURM controller answers (squeue failed); "
            "run this on a login node"
        )
    return slurm, queue


def _check_matrix_space(runnable: list[RunConfig], rt: RuntimeConfig, base: Path) -> None:
    from ..rundir.checkpoint import checkpoint_bytes

    need = sum(checkpoint_bytes(c) for c in runnable) * (rt.keep_checkpoints + 1)
    free = shutil.disk_usage(base).free
    if free < need:
        raise UserError(
            f"--results: {base} has {free:,} bytes free; the checkpoints of "
            f"{len(runnable)} cells need {need:,}"
        )


def plan_matrix(args: MatrixRequest) -> MatrixPlan:
    """Every check of a matrix invocation, then its cells, their directories and states."""
    from ..data.datasets import load_dataset
    from ..matrix.cells import cell_state, expand, get_profile
    from ..matrix.dispatch import LocalPool
    from ..matrix.experiments import Selection, get_experiment

    executor = get_executor(args.executor)
    profile = get_profile(args.profile)
    try:
        exp_options = get_experiment(args.experiment).options
    except KeyError as e:
        raise UserError(f"--experiment: {e.args[0]}") from None
    given = {**profile.options, **exp_options, **args.options}
    if profile.needs_data and "data" not in args.options:
        raise UserError(
            f"--data: profile {args.profile!r} trains on LSUN bedrooms; give --data CACHE "
            "(made by prepare-data), or use --profile demo for the built-in data"
        )
    _check_selection(args)
    workers = args.workers or (usable_cpus() if profile.cpu_workers == 0 else profile.cpu_workers)
    rt = resolve_runtime_config(given)
    if not executor.slurm:  # a login node need not have the GPUs the jobs will get
        from ..training.trainer import resolve_device

        resolve_device(rt.device)
    dataset = load_dataset(rt.data)
    shared = {k: v for k, v in given.items() if OPTIONS_BY_KEY[k].section == "run"}
    archs = args.archs or (list(profile.archs) if profile.archs else None)  # --arch wins
    sel = Selection(archs=archs, procedures=args.procedures, seeds=args.seeds)
    configs = expand(
        args.experiment, sel, shared, dataset=dataset.kind, data_fingerprint=dataset.fingerprint
    )
    if not configs:
        raise UserError("the selection holds no cells")
    for cfg in configs:
        check_resolution(cfg, dataset, rt.data, data_given="data" in args.options)
    check_enough_images(dataset, max(c.batch_size for c in configs), rt.data)
    results = Path(rt.results)
    gpus = parse_gpus(args.gpus)
    sizes = {(c.dim, c.batch_size) for c in configs}
    packing = parse_packing(args.cells_per_gpu, gpus, executor, results, sizes)
    pool = LocalPool(gpus, packing, workers)
    run_dirs = [results / c.run_id for c in configs]
    for cfg, d in zip(configs, run_dirs, strict=True):
        check_existing_run(RunDir(d), cfg)
    base = check_writable(results, "--results")
    slurm, queue = _slurm_profile_and_queue(args, executor, rt, run_dirs)
    states = [cell_state(d, queue) for d in run_dirs]
    runnable = [c for c, s in zip(configs, states, strict=True) if s.runnable]
    if runnable and not args.dry_run:
        _check_matrix_space(runnable, rt, base)
        rt = with_weights(rt)
    return MatrixPlan(
        args.experiment, configs, run_dirs, states, rt, dataset, executor, results, pool,
        slurm,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from ..matrix import dispatch
    from ..matrix.cells import cell_state, terminal_summary, write_manifest, write_summary

    plan = plan_matrix(MatrixRequest.from_args(args))
    if args.dry_run:
        _print_dry_run(plan)
        return EXIT_OK
    write_manifest(plan.results, plan.experiment, plan.configs, plan.run_dirs)
    cells = zip(plan.configs, plan.run_dirs, plan.states, strict=True)
    todo = [(c, d) for c, d, s in cells if s.runnable]
    print(f"{len(plan.configs)} cells: {len(todo)} to run{_not_run(plan.states)}")
    _print_packing(plan)
    specs = [dispatch.CellSpec(c.to_dict(), cell_runtime(plan), str(d)) for c, d in todo]
    if plan.executor.slurm and not specs:
        print("nothing to submit")
        return EXIT_OK
    stop = execute(
        Execution(plan.executor, plan.pool, plan.slurm, dispatch.submission_folder(plan.results),
                  wait=args.wait, noun="cells", running="running cells",
                  submitted_hint=f"watch them with: python -m reproduce status --results "
                  f"{plan.results}"),
        specs, before_submit=lambda: _write_configs(plan, todo),
    )  # fmt: skip
    if stop is not None:
        return stop
    path, rows = write_summary(plan.results, plan.configs, plan.run_dirs)
    print(terminal_summary(rows), end="")
    print(f"summary with every column written to {path} (and .csv)")
    res = "" if plan.results == Path("results") else f" --results {plan.results}"
    print(f"next: python -m reproduce report{res}  (tables, plots, an HTML page)")
    print(f"      tensorboard --logdir {plan.results / 'tensorboard'}  (curves and samples)")
    states = {cell_state(d).state for d in plan.run_dirs}
    if states <= {"completed", "diverged"}:
        return EXIT_OK
    # a cell that failed: 1; cells still running or queued elsewhere (busy): 75, try later
    return EXIT_FAILED if "failed" in states else EXIT_TEMPFAIL


def _not_run(states: Sequence[Any]) -> str:
    """', 28 already done' / ', 2 running or queued elsewhere': why the other cells do not
    run now ('' when every cell runs)."""
    done = sum(s.state in ("completed", "diverged") for s in states)
    busy = sum(s.state in ("running", "queued") for s in states)
    return (f", {done} already done" if done else "") + (
        f", {busy} running or queued elsewhere" if busy else ""
    )


def _print_dry_run(plan: MatrixPlan) -> None:
    width = max(len(d.name) for d in plan.run_dirs)
    for d, st in zip(plan.run_dirs, plan.states, strict=True):
        extra = f" ({st.detail})" if st.detail else ""
        print(f"{d.name:<{width}}  {st.state}{extra}")
    n = sum(s.runnable for s in plan.states)
    executor = plan.executor.name
    print(f"{len(plan.configs)} cells, {n} to run ({executor} executor); dry run: nothing done")
    _print_packing(plan)
    if plan.executor.local and plan.pool.on_cpu and n:
        print(_cpu_estimate(plan))


def _cpu_estimate(plan: MatrixPlan) -> str:
    """The dry-run's line: the wall time of the runnable cells on this many CPU workers,
    largest first (``costs.estimate``): each cell's start, training, held-out losses,
    evaluations and sample grids, and the demo judge's build when it is not cached."""
    from ..data.datasets import heldout_split
    from ..matrix import costs
    from ..matrix.cells import duration_text

    rt = plan.rt
    heldout = heldout_split(rt.data, rt.heldout) is not None
    cells: list[tuple[dict[str, Any], costs.Schedule]] = []
    for cfg, st in zip(plan.configs, plan.states, strict=True):
        if not st.runnable:
            continue
        evals: tuple[int, ...] = ()
        if rt.eval_enabled:
            periodic = (cfg.iters - 1) // rt.eval_interval(cfg.iters)
            evals = (rt.samples("periodic"),) * periodic + (rt.samples("final"),)
        schedule = costs.Schedule(
            evals=evals,
            heldouts=rt.heldout_count(cfg.iters) if heldout else 0,
            grids=(cfg.iters - 1) // rt.sample_every + 1 if rt.sample_every > 0 else 1,
            judged=rt.judge_kind == "demo",
        )
        cells.append((cfg.to_dict(), schedule))
    judge_build = False
    if rt.eval_enabled and rt.judge_kind == "demo" and cells:
        from ..evaluation.judge import is_cached

        judge_build = not is_cached()  # built once, on one core, before any cell starts
    est = costs.estimate(cells, plan.pool.cpu_workers, judge_build)
    how = (
        "measured per cell"
        if est.measured == est.cells
        else f"{est.cells - est.measured} of {est.cells} cells scaled from the nearest measured "
        "width, batch or cell: rough"
    )
    unscored = (
        "; Inception's scoring of the evaluations not counted"
        if rt.eval_enabled and rt.judge_kind != "demo"
        else ""
    )
    return (
        f"estimated wall time: {duration_text(est.wall_s, spaced=True)} on "
        f"{plan.pool.cpu_workers} CPU worker(s), largest cells first "
        f"({est.core_s / 3600:.2f} core-hours; {how}; {est.machine}, "
        f"reproduce/matrix/costs.json{unscored})"
    )


def _print_packing(plan: MatrixPlan) -> None:
    if plan.executor.local and not plan.pool.on_cpu:
        from ..matrix.dispatch import Packing

        if plan.pool.packing != Packing():
            print(plan.pool.packing.describe())


def cell_runtime(plan: MatrixPlan) -> dict[str, Any]:
    """Runtime settings of each cell: threads split between CPU workers, between the cells
    that may run at once on the GPUs (each GPU's most packed architecture), or the SLURM
    cores."""
    threads = plan.rt.threads
    if threads is None and plan.executor.local and plan.pool.on_cpu:
        threads = max(1, usable_cpus() // plan.pool.cpu_workers)
    elif threads is None and plan.executor.local and plan.configs:
        most = max(plan.pool.packing.cells(c.arch) for c in plan.configs)
        threads = max(1, usable_cpus() // (len(plan.pool.gpus) * most))
    if threads is None and plan.executor.slurm:
        threads = plan.slurm.cpus_per_task
    return {**plan.rt.to_dict(), "threads": threads}


def _write_configs(plan: MatrixPlan, todo: list[tuple[RunConfig, Path]]) -> None:
    """Each cell's config.json before it is submitted, so that `status` shows queued cells."""
    from ..fileio import atomic_write_json
    from ..training.loop import run_config_document

    for cfg, d in todo:
        if not RunDir(d).exists():
            doc = run_config_document(cfg, plan.rt, plan.dataset, d.name)
            atomic_write_json(RunDir(d).config_file, doc)


def add_parser(sub: Any) -> Parser:
    """The ``matrix`` subcommand's arguments."""
    matrix = subcommand(
        sub,
        "matrix",
        help="train every cell of an experiment (the 7x4 LSUN matrix), each exactly once",
        description="Cross architectures x procedures (x seeds), skip finished cells, resume "
        "interrupted ones, and dispatch the rest to local CPUs/GPUs, SLURM or in-process.",
    )
    sel = matrix.add_argument_group("which cells")
    sel.add_argument("--experiment", default="lsun", help="named experiment (default: lsun)")
    sel.add_argument(
        "--profile",
        default="paper",
        help="named settings: 'paper' (200k iterations, batch 64, width 64; needs "
        "--data) or 'demo' (built-in data, small and fast) (default: paper)",
    )
    sel.add_argument(
        "--arch",
        dest="archs",
        nargs="+",
        metavar="ARCH",
        default=None,
        help="architectures (default: all seven)",
    )
    sel.add_argument(
        "--procedure",
        dest="procedures",
        nargs="+",
        metavar="PROC",
        default=None,
        help="procedures (default: all four)",
    )
    sel.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        metavar="SEED",
        default=[0],
        help="seeds, one replicate of every cell per seed (default: 0)",
    )
    # share_gpu: the matrix sets it for each cell from its packing
    add_run_options(matrix, skip=frozenset({"arch", "procedure", "seed", "name", "share_gpu"}),
                    matrix=True)  # fmt: skip
    add_dispatch_options(matrix)
    return matrix
