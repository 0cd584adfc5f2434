"""``reproduce figures``: the paper's figures; the runs they need go through the matrix path."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..config.runtime import usable_cpus
from ..errors import UserError, did_you_mean
from ..fileio import check_writable
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    add_dispatch_options,
    add_run_options,
    get_executor,
    given_options,
    subcommand,
)
from .execute import Execution, execute
from .matrix import (
    MatrixPlan,
    MatrixRequest,
    cell_runtime,
    parse_gpus,
    parse_packing,
    plan_matrix,
)


def _figure_request(args: argparse.Namespace, need: Any, results: Path) -> MatrixRequest:
    """The matrix request of a figure's cells (same validation, same dispatch as ``matrix``),
    with the figure's options and the results directory as the options given."""
    return MatrixRequest(
        experiment=need.experiment, profile=need.profile,
        options={**need.options, "results": str(results)}, archs=need.archs,
        procedures=need.procedures, seeds=[args.seed], executor=args.executor, gpus=args.gpus,
        cells_per_gpu=args.cells_per_gpu, workers=args.workers,
        slurm_profile=args.slurm_profile, slurm_overrides=args.slurm_overrides,
        dry_run=args.dry_run,
    )  # fmt: skip


def _check(args: argparse.Namespace) -> None:
    if args.profile == "quick":
        raise UserError("--profile: 'quick' is now called 'demo', as in `matrix --profile demo`")
    if args.profile not in ("demo", "paper"):
        hint = did_you_mean(args.profile, ("demo", "paper"))
        raise UserError(f"--profile: unknown profile {args.profile!r}{hint}; valid: demo, paper")
    if args.toy_iters is not None and args.toy_iters < 1:
        raise UserError(f"--toy-iters: must be at least 1, got {args.toy_iters}")
    if args.seed < 0:
        raise UserError(f"--seed: must be >= 0, got {args.seed}")
    get_executor(args.executor)  # a bad name fails before anything is planned


def _specs(plans: dict[str, Any], results: Path, pool: Any, workers: int) -> list[Any]:
    """The runs still to train, each once even when two figures need it."""
    from ..matrix import dispatch
    from ..matrix.cells import cell_state

    specs: dict[str, Any] = {}
    toy_threads = max(1, usable_cpus() // workers) if pool.on_cpu else None
    for plan in plans.values():
        if isinstance(plan, MatrixPlan):
            rt = cell_runtime(plan)
            for cfg, d, st in zip(plan.configs, plan.run_dirs, plan.states, strict=True):
                if st.runnable:
                    specs.setdefault(str(d), dispatch.CellSpec(cfg.to_dict(), rt, str(d)))
        else:
            for run in plan:
                d = results / run.run_id
                if cell_state(d).runnable:
                    runtime = {"checkpoint_every": 300.0, "threads": toy_threads}
                    specs.setdefault(str(d), dispatch.CellSpec(
                        run.config.to_dict(), runtime, str(d), kind="toy"))  # fmt: skip
    return list(specs.values())


def _print_dry_run(plans: dict[str, Any], results: Path, todo: list[Any], names: list[str]) -> None:
    from ..matrix.cells import cell_state

    for name, plan in plans.items():
        dirs = plan.run_dirs if isinstance(plan, MatrixPlan) else [
            results / r.run_id for r in plan]  # fmt: skip
        for d in dirs:
            print(f"{name}  {d.name}  {cell_state(d).state}")
    print(f"{len(todo)} runs to train for {', '.join(names)}; dry run: nothing done")


def _draw(args: argparse.Namespace, ctx: Any, plans: dict[str, Any]) -> int:
    """Draw every figure whose runs are all done; EXIT_FAILED if any could not be drawn."""
    from ..matrix.cells import cell_state
    from ..reporting import figures
    from ..training.toy import ToyConfig

    failed = []
    for name, plan in plans.items():
        fig = figures.FIGURES[name]
        if isinstance(plan, MatrixPlan):
            states = [cell_state(d).state for d in plan.run_dirs]
            ok = all(s in ("completed", "diverged") for s in states)
            runs: Any = plan.configs
        else:
            states = [cell_state(ctx.results / r.run_id).state for r in plan]
            ok = all(s == "completed" for s in states)
            runs = plan
            assert all(isinstance(r.config, ToyConfig) for r in plan)
        if not ok:
            bad = sorted({s for s in states if s not in ("completed", "diverged")})
            print(f"{name}: not drawn, some of its runs are {', '.join(bad)}", file=sys.stderr)
            failed.append(name)
            continue
        numbers = fig.draw(ctx, runs)
        path = figures.write_numbers(ctx, name, {"figure": fig.title, "profile": args.profile,
                                                 "seed": args.seed, **numbers})  # fmt: skip
        print(f"{name}: {path.with_suffix('.png')} (and .pdf; numbers in {path.name})")
    return EXIT_FAILED if failed else EXIT_OK


def run(args: argparse.Namespace) -> int:
    from ..matrix import dispatch
    from ..matrix.cells import write_manifest
    from ..reporting import figures

    _check(args)
    if args.cifar is not None:  # checked here, so that its error names --cifar, not --data
        from ..data.datasets import load_dataset

        try:
            load_dataset(args.cifar)
        except UserError as e:
            raise UserError(f"--cifar: {str(e).removeprefix('--data: ')}") from None
    names = figures.resolve_names(args.names)
    given = given_options(args)
    results = Path(given.pop("results", "results"))
    data = given.pop("data", None)
    ctx = figures.Context(results, args.profile, args.seed, data, args.cifar, given,
                          args.toy_iters)  # fmt: skip
    check_writable(results, "--results")
    # plan everything first: every mistake fails before any run starts
    plans: dict[str, Any] = {}
    for name in names:
        need = figures.FIGURES[name].needs(ctx)
        if isinstance(need, figures.MatrixRuns):
            plans[name] = plan_matrix(_figure_request(args, need, results))
        else:
            plans[name] = need
    workers = args.workers or usable_cpus()
    gpus = parse_gpus(args.gpus)
    sizes = {(c.dim, c.batch_size) for p in plans.values() if isinstance(p, MatrixPlan)
             for c in p.configs}  # fmt: skip
    packing = parse_packing(args.cells_per_gpu, gpus, get_executor(args.executor), results, sizes)
    pool = dispatch.LocalPool(gpus, packing, workers)
    todo = _specs(plans, results, pool, workers)
    if args.dry_run:
        _print_dry_run(plans, results, todo, names)
        return EXIT_OK
    for plan in plans.values():
        if isinstance(plan, MatrixPlan):
            write_manifest(plan.results, plan.experiment, plan.configs, plan.run_dirs)
    print(f"figures {', '.join(names)}: {len(todo)} runs to train")
    if todo:
        slurm = None
        executor = get_executor(args.executor)
        if executor.slurm:
            slurm, _ = dispatch.load_slurm_profile(args.slurm_profile, args.slurm_overrides)
        how = Execution(executor, pool, slurm, dispatch.submission_folder(results),
                        wait=args.wait, noun="runs", running="runs",
                        submitted_hint="" if args.wait else "run the same command again when "
                        "they are done to draw the figures")  # fmt: skip
        stop = execute(how, todo)
        if stop is not None:
            return stop
    return _draw(args, ctx, plans)


def add_parser(sub: Any) -> Parser:
    """The ``figures`` subcommand's arguments."""
    figures = subcommand(
        sub,
        "figures",
        help="regenerate the paper's figures (runs what they need first)",
        description="Draw the paper's figures into RESULTS/figures: fig1a, fig1b (fig1: both), "
        "fig2, fig3, fig5a (default: all of these), and showcase (DCGAN and WGAN-GP trained "
        "on the shapes data on a CPU). Runs each figure needs and that are not done yet "
        "are trained first through the matrix machinery (each exactly once, resumable).",
    )
    figures.add_argument("names", nargs="*", metavar="NAME",
                         help="figures (default: the paper's)")  # fmt: skip
    figures.add_argument(
        "--profile",
        default="demo",
        help="demo: CPU minutes (Figure 1), "
        "Figures 2 and 5a on the demo data; paper: the paper's settings "
        "(default: demo)",
    )
    figures.add_argument(
        "--cifar",
        default=None,
        metavar="PATH",
        help="Figure 3: the CIFAR-10 "
        "python archive (cifar-10-python.tar.gz or cifar-10-batches-py)",
    )
    figures.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    figures.add_argument(
        "--toy-iters",
        type=int,
        default=None,
        metavar="N",
        help="iterations of Figure 1's toy runs (default: from --profile)",
    )
    add_run_options(  # share_gpu: set for each cell from its packing
        figures,
        skip=frozenset({"arch", "procedure", "seed", "name", "mode", "share_gpu"}),
        matrix=True,
    )
    add_dispatch_options(figures)
    return figures
