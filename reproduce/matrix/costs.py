"""What a cell costs on a CPU, used to start the largest cells first on a CPU (so that the
ResNet-101 cells do not run last on one core while the other idles) and for the wall-time
estimate of ``matrix --dry-run``.

The numbers are measured, never written here: ``costs.json`` beside this module holds one
table per (width, batch) with the machine, date, commit and torch version it was measured
on, written by ``python -m reproduce.matrix.costs --write`` (the training step, the held-out
critic loss and the generator's forward pass per sample of every architecture x procedure,
each timed once warm), plus the per-cell overheads read from real runs. A cell is costed
from the table nearest its width and batch, scaled by (width ratio)^2 x (batch ratio); a cell
in no table (a new architecture or procedure, the CIFAR pair) from the median of its
procedure's cells in that table. Either is flagged in the estimate (``Cost.measured``). On
the reference machine a cell's speed varies by up to about a quarter between runs, so the
estimate is a guide, not a promise.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

COSTS_FILE = Path(__file__).with_name("costs.json")
GRID_SAMPLES = 64  # one 8x8 sample grid


@dataclass(frozen=True)
class Table:
    """One measured table: seconds per (arch, procedure) at one width and batch."""

    dim: int
    batch_size: int
    steps: Mapping[tuple[str, str], float]
    heldouts: Mapping[tuple[str, str], float]
    samples: Mapping[str, float]
    about: Mapping[str, Any]  # machine, date, commit, torch, workers, warmup, steps

    def distance(self, dim: float, batch: float) -> float:
        return abs(math.log2(dim / self.dim)) + abs(math.log2(batch / self.batch_size))


@dataclass(frozen=True)
class Costs:
    tables: tuple[Table, ...]
    overheads: Mapping[str, float]

    @property
    def machine(self) -> str:
        return str(self.tables[0].about.get("machine", "the reference machine"))


@dataclass(frozen=True)
class Cost:
    """A cell's measured seconds, scaled to its width and batch. ``measured``: its own
    (arch, procedure) was in the table used and the table has its width and batch."""

    step: float
    heldout: float
    sample: float
    measured: bool
    table: Table


def _parse(doc: Mapping[str, Any]) -> Costs:
    tables = []
    for t in doc["tables"]:
        cells = {tuple(k.split("/", 1)): v for k, v in t["cells"].items()}
        tables.append(Table(
            int(t["dim"]), int(t["batch_size"]),
            {k: float(v["step_s"]) for k, v in cells.items()},
            {k: float(v["heldout_s"]) for k, v in cells.items()},
            {k: float(v) for k, v in t["sample_s"].items()},
            {k: v for k, v in t.items() if k not in ("cells", "sample_s")},
        ))  # fmt: skip
    over = {k: float(v) for k, v in doc["overheads"].items() if isinstance(v, int | float)}
    return Costs(tuple(tables), over)


@cache
def load(path: Path = COSTS_FILE) -> Costs:
    return _parse(json.loads(path.read_text()))


def overhead(name: str) -> float:
    """``startup_s`` (a cell's process outside its run), ``judge_build_s``, ``judge_per_sample_s``,
    ``eval_overhead_s``, ``first_eval_s``."""
    return load().overheads[name]


def cost(config: Mapping[str, Any], costs: Costs | None = None) -> Cost:
    """A resolved run config's (dict) costs, from the table nearest its width and batch that
    holds its cell, else from the nearest table's median of its procedure's cells."""
    costs = costs or load()
    arch, proc = str(config.get("arch", "")), str(config.get("procedure", ""))
    dim, batch = float(config.get("dim", 8)), float(config.get("batch_size", 16))
    by_distance = sorted(costs.tables, key=lambda t: t.distance(dim, batch))
    table = next((t for t in by_distance if (arch, proc) in t.steps), None)
    if table is not None:
        step, held = table.steps[arch, proc], table.heldouts[arch, proc]
        sample = table.samples.get(arch, statistics.median(table.samples.values()))
        own = True
    else:
        table = by_distance[0]
        keys = [k for k in table.steps if k[1] == proc] or list(table.steps)
        step = statistics.median(table.steps[k] for k in keys)
        held = statistics.median(table.heldouts[k] for k in keys)
        sample = statistics.median(table.samples.values())
        own = False
    width = (dim / table.dim) ** 2
    scale = width * batch / table.batch_size
    exact = own and dim == table.dim and batch == table.batch_size
    return Cost(step * scale, held * scale, sample * width, exact, table)


@dataclass(frozen=True)
class Schedule:
    """What a cell does besides training: the samples of each evaluation, its held-out
    critic losses and its sample grids. ``judged``: the evaluations are scored by the demo
    judge, whose costs the tables hold (False for Inception: its samples are generated, but
    its scoring is not counted)."""

    evals: tuple[int, ...] = ()
    heldouts: int = 0
    grids: int = 0
    judged: bool = True


def seconds_per_iter(config: Mapping[str, Any]) -> float:
    """Estimated CPU seconds per generator iteration of a resolved run config (dict)."""
    return cost(config).step


def cell_seconds(config: Mapping[str, Any]) -> float:
    """Training seconds of a cell (its iterations only): the order cells start in."""
    return seconds_per_iter(config) * float(config.get("iters", 0))


def cell_wall_seconds(config: Mapping[str, Any], schedule: Schedule) -> float:
    """Wall seconds of a cell on one CPU worker: its process's start, its training, its
    held-out losses, and generating and judging its evaluations' and grids' samples."""
    c = cost(config)
    generated = sum(schedule.evals) + GRID_SAMPLES * schedule.grids
    scoring = (
        sum(schedule.evals) * overhead("judge_per_sample_s")
        + len(schedule.evals) * overhead("eval_overhead_s")
        + (overhead("first_eval_s") if schedule.evals else 0.0)
    )
    return (
        overhead("startup_s")
        + c.step * float(config.get("iters", 0))
        + schedule.heldouts * c.heldout
        + generated * c.sample
        + (scoring if schedule.judged else 0.0)
    )


def longest_first(items: Sequence[T], config: Callable[[T], Mapping[str, Any]]) -> list[T]:
    """The order a CPU pool starts cells in (``dispatch.LocalPool.order``, and the dry-run's
    estimate of it): the longest training first, matrix order among equals."""
    return sorted(items, key=lambda item: cell_seconds(config(item)), reverse=True)


def makespan(cells: list[float], workers: int) -> float:
    """Wall time of cells of the given lengths on ``workers`` workers, started in the order
    given, each on the first worker to be free."""
    loads = [0.0] * max(1, workers)
    for c in cells:
        i = loads.index(min(loads))
        loads[i] += c
    return max(loads)


def steady_seconds(
    step: Callable[[], object],
    warmup: int = 3,
    steps: int = 10,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median seconds of one call of ``step`` once warm: ``warmup`` calls untimed (the
    first iterations allocate and pick kernels), then the median of ``steps`` timed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t = clock()
        step()
        times.append(clock() - t)
    return statistics.median(times)


@dataclass(frozen=True)
class Estimate:
    wall_s: float  # on the workers, largest cells first
    core_s: float
    measured: int  # cells whose own width, batch and (arch, procedure) are in the tables
    cells: int
    machine: str


def estimate(
    cells: Sequence[tuple[Mapping[str, Any], Schedule]], workers: int, judge_build: bool
) -> Estimate:
    """The wall time of ``cells`` on ``workers`` CPU workers, started in the pool's order
    (``longest_first``), plus the demo judge's build (one core, before any cell) when asked."""
    walls = [(config, cell_wall_seconds(config, sched)) for config, sched in cells]
    started = [w for _, w in longest_first(walls, lambda cell: cell[0])]
    wall = makespan(started, workers) + (overhead("judge_build_s") if judge_build else 0.0)
    measured = sum(cost(config).measured for config, _ in cells)
    return Estimate(wall, sum(started), measured, len(cells), load().machine)


def _measure_cell(
    arch: str, procedure: str, dim: int, batch: int, warmup: int, steps: int
) -> tuple[float, float, float]:
    """(training step, held-out critic loss, seconds per generated sample) of one cell, each
    timed once warm on the real code: ``Trainer.step``, ``Trainer.heldout`` and the
    evaluations' ``generate_uint8``."""
    import torch

    from ..config.run import resolve_run_config
    from ..data.datasets import derive_seed, load_demo
    from ..evaluation.metrics import generate_uint8
    from ..training.trainer import Trainer

    torch.set_num_threads(1)
    ds, val = load_demo("train"), load_demo("val")
    cfg = resolve_run_config(
        {"arch": arch, "procedure": procedure, "dim": dim, "batch_size": batch, "iters": 1000},
        dataset="demo",
        data_fingerprint=ds.fingerprint,
    )
    trainer = Trainer(cfg, ds, torch.device("cpu"))
    step = steady_seconds(trainer.step, warmup, steps)
    heldout = steady_seconds(lambda: trainer.heldout(val), 1, max(1, steps // 2))
    n = 16 * batch
    seed = derive_seed(cfg.seed, "costs", 0)
    sample = steady_seconds(
        lambda: generate_uint8(trainer.G, n, batch, seed, torch.device("cpu")), 1, 3
    )
    return step, heldout, sample / n


def measure(
    archs: list[str],
    procedures: list[str],
    dim: int = 8,
    batch: int = 16,
    workers: int = 2,
    warmup: int = 3,
    steps: int = 10,
) -> dict[str, Any]:
    """Measure every (arch, procedure) on this machine as the tables' reference condition
    has it: one thread per cell, ``workers`` cells at once (spawned processes, the costliest
    cells first so that the pool stays full). Returns one table of ``costs.json`` (its cells,
    the median per-sample cost of each architecture, and where and how it was measured)."""
    import multiprocessing as mp
    import platform
    from concurrent.futures import ProcessPoolExecutor

    import torch

    cells = [(a, p) for a in archs for p in procedures]
    order = sorted(cells, key=lambda c: cost({"arch": c[0], "procedure": c[1]}).step, reverse=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {c: pool.submit(_measure_cell, *c, dim, batch, warmup, steps) for c in order}
        measured = {c: futures[c].result() for c in cells}
    return {
        "dim": dim,
        "batch_size": batch,
        "measured": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__.split("+")[0],
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads available",
        "workers": workers,
        "warmup": warmup,
        "steps": steps,
        "cells": {
            f"{a}/{p}": {"step_s": _3g(v[0]), "heldout_s": _3g(v[1])}
            for (a, p), v in measured.items()
        },
        "sample_s": {
            a: _3g(statistics.median(v[2] for (x, _), v in measured.items() if x == a))
            for a in archs
        },
    }


def _3g(v: float) -> float:
    return float(f"{v:.3g}")


def write_table(table: dict[str, Any], path: Path = COSTS_FILE) -> None:
    """Put ``table`` into the costs file: its cells join (and replace) those of the table
    with the same width and batch, which is created when there is none."""
    from ..fileio import atomic_write_json

    doc = json.loads(path.read_text())
    same = [t for t in doc["tables"]
            if (t["dim"], t["batch_size"]) == (table["dim"], table["batch_size"])]  # fmt: skip
    if same:
        old = same[0]
        old.update({k: v for k, v in table.items() if k not in ("cells", "sample_s")})
        old["cells"].update(table["cells"])
        old["sample_s"].update(table["sample_s"])
    else:
        doc["tables"].append(table)
    doc["tables"].sort(key=lambda t: (t["dim"], t["batch_size"]))
    atomic_write_json(path, doc)
    load.cache_clear()


def main(argv: list[str] | None = None) -> None:
    """python -m reproduce.matrix.costs [--write] [--dim D] [--batch-size B] [ARCHS] [PROCS]"""
    import argparse

    from architectures import PAIRS

    from ..gan.procedures import PROCEDURES

    class Parser(argparse.ArgumentParser):  # one-line errors, exit 2 (cli.common imports us)
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"{self.prog}: error: {message}\n")

    ap = Parser(
        prog="python -m reproduce.matrix.costs",
        description="Measure what every cell costs on this CPU (one thread per cell, WORKERS "
        "cells at once) at one width and batch; print the table as JSON, or with --write put "
        "it into costs.json, which the matrix's estimate reads.",
    )
    ap.add_argument("archs", nargs="?", default=",".join(PAIRS), help="comma-separated")
    ap.add_argument("procedures", nargs="?", default=",".join(PROCEDURES), help="comma-separated")
    ap.add_argument("--dim", type=int, default=8, help="network width (default: 8)")
    ap.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    ap.add_argument("--workers", type=int, default=2, help="cells measured at once (default: 2)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations per cell")
    ap.add_argument("--steps", type=int, default=10, help="timed iterations per cell (median)")
    ap.add_argument("--write", action="store_true", help=f"put the table into {COSTS_FILE.name}")
    args = ap.parse_args(argv)
    archs, procs = args.archs.split(","), args.procedures.split(",")
    for a in archs:
        if a not in PAIRS:
            ap.error(f"unknown architecture {a!r} (one of {', '.join(PAIRS)})")
    for p in procs:
        if p not in PROCEDURES:
            ap.error(f"unknown procedure {p!r} (one of {', '.join(PROCEDURES)})")
    if args.workers < 1 or args.warmup < 0 or args.steps < 1:
        ap.error("--workers and --steps must be at least 1, --warmup at least 0")
    if args.dim < 1 or args.batch_size < 1:
        ap.error("--dim and --batch-size must be at least 1")
    table = measure(archs, procs, args.dim, args.batch_size, args.workers, args.warmup, args.steps)
    print(json.dumps(table, indent=2), flush=True)
    if args.write:
        write_table(table)
        print(f"written to {COSTS_FILE}")


if __name__ == "__main__":
    main()
