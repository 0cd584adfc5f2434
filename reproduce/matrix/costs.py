"""What a cell costs on a CPU: measured seconds of every architecture x procedure, used to
start the largest cells first on a CPU (so that the ResNet-101 cells do not run last on one
core while the other idles) and for the wall-time estimate of ``matrix --dry-run``.

The tables were measured on this project's reference machine (2-core x86-64 CPU, one thread
per cell, two cells at once, torch 2.14.1, exact mode) at width 8 and batch 16, the size of
the demo and claims profiles, by ``python -m reproduce.matrix.costs`` (which prints new tables in
about two minutes): the training step, the held-out critic loss and the generator's forward
pass per sample, each timed once warm (the median of ``--steps`` timed calls after
``--warmup`` untimed ones). On that machine a cell's speed varies by up to about a quarter
between runs of the same code on the same day, so the estimate is a guide, not a promise.
Other sizes are scaled by (dim / 8)^2 * (batch / 16): a rough guide, said so where printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

REFERENCE_DIM, REFERENCE_BATCH = 8, 16
REFERENCE_MACHINE = "2-core x86-64 CPU, 1 thread per cell"

# seconds per generator iteration, (arch, procedure); this table and the next two measured by
# `python -m reproduce.matrix.costs --steps 20` on 2026-12-04 (the code of 3a16063)
SECONDS_PER_ITER: dict[tuple[str, str], float] = {
    ("baseline", "dcgan"): 0.0467,
    ("baseline", "lsgan"): 0.0486,
    ("baseline", "wgan"): 0.154,
    ("baseline", "wgan-gp"): 0.269,
    ("constant-filters", "dcgan"): 0.0397,
    ("constant-filters", "lsgan"): 0.0377,
    ("constant-filters", "wgan"): 0.131,
    ("constant-filters", "wgan-gp"): 0.256,
    ("mlp-generator", "dcgan"): 0.0348,
    ("mlp-generator", "lsgan"): 0.034,
    ("mlp-generator", "wgan"): 0.113,
    ("mlp-generator", "wgan-gp"): 0.239,
    ("no-norm", "dcgan"): 0.0431,
    ("no-norm", "lsgan"): 0.0432,
    ("no-norm", "wgan"): 0.14,
    ("no-norm", "wgan-gp"): 0.257,
    ("gated", "dcgan"): 0.0788,
    ("gated", "lsgan"): 0.0739,
    ("gated", "wgan"): 0.251,
    ("gated", "wgan-gp"): 0.467,
    ("tanh", "dcgan"): 0.053,
    ("tanh", "lsgan"): 0.0508,
    ("tanh", "wgan"): 0.183,
    ("tanh", "wgan-gp"): 0.285,
    ("resnet101", "dcgan"): 0.522,
    ("resnet101", "lsgan"): 0.504,
    ("resnet101", "wgan"): 1.68,
    ("resnet101", "wgan-gp"): 3.08,
}
DEFAULT_SECONDS = 0.5  # an architecture or procedure not in the table (cifar, toy cells)
# a cell's process outside its run (submitit's start, imports, the judge checked, the data
# made): four demo cells of the mlp-generator row on 2 workers took 80 worker-seconds, 44 of
# them inside their runs (2026-12-04)
STARTUP_SECONDS = 9.0
JUDGE_BUILD_SECONDS = 35.0  # the demo judge, built once before any cell when not cached

# seconds of one held-out critic loss (heldout.jsonl, Figure 5a; every iters // 100
# iterations when the data has a val split), (arch, procedure)
HELDOUT_SECONDS: dict[tuple[str, str], float] = {
    ("baseline", "dcgan"): 0.0133,
    ("baseline", "lsgan"): 0.0138,
    ("baseline", "wgan"): 0.0139,
    ("baseline", "wgan-gp"): 0.0234,
    ("constant-filters", "dcgan"): 0.0113,
    ("constant-filters", "lsgan"): 0.0112,
    ("constant-filters", "wgan"): 0.0114,
    ("constant-filters", "wgan-gp"): 0.0209,
    ("mlp-generator", "dcgan"): 0.00827,
    ("mlp-generator", "lsgan"): 0.00824,
    ("mlp-generator", "wgan"): 0.00965,
    ("mlp-generator", "wgan-gp"): 0.0177,
    ("no-norm", "dcgan"): 0.0117,
    ("no-norm", "lsgan"): 0.0118,
    ("no-norm", "wgan"): 0.0181,
    ("no-norm", "wgan-gp"): 0.0211,
    ("gated", "dcgan"): 0.0232,
    ("gated", "lsgan"): 0.0219,
    ("gated", "wgan"): 0.0229,
    ("gated", "wgan-gp"): 0.0369,
    ("tanh", "dcgan"): 0.0163,
    ("tanh", "lsgan"): 0.0156,
    ("tanh", "wgan"): 0.0161,
    ("tanh", "wgan-gp"): 0.026,
    ("resnet101", "dcgan"): 0.14,
    ("resnet101", "lsgan"): 0.133,
    ("resnet101", "wgan"): 0.133,
    ("resnet101", "wgan-gp"): 0.222,
}

# seconds per generated sample: the generator's forward pass at batch 16, per architecture
# (evaluations and sample grids)
SAMPLE_SECONDS: dict[str, float] = {
    "baseline": 0.000474,
    "constant-filters": 0.000329,
    "mlp-generator": 0.000102,
    "no-norm": 0.000412,
    "gated": 0.000692,
    "tanh": 0.000503,
    "resnet101": 0.0029,
}

# the demo judge's scoring of one generated sample (IS, Frechet distance, KID, modes, pixel
# diversity through torch-fidelity) and of one evaluation whatever its size: from the
# evaluation rows of real runs (2026-12-04, one thread; mlp-generator DCGAN: 500 samples in
# 1.30 s, 2,000 in 4.42 s, less its generator's share; ResNet-101 DCGAN: 2.71 s and 10.56 s,
# which these constants and SAMPLE_SECONDS put at 2.6 s and 10.1 s)
JUDGE_SECONDS_PER_SAMPLE = 0.002
EVAL_OVERHEAD_SECONDS = 0.25
# a process's first evaluation: torch-fidelity and the judge loaded and warmed up (the same
# four cells: 500 samples in 2.7-5.0 s at the first evaluation, two cells at once)
FIRST_EVAL_SECONDS = 2.5
GRID_SAMPLES = 64  # one 8x8 sample grid


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


def _width_scale(config: Mapping[str, Any]) -> float:
    """A generated sample's cost scales with width squared."""
    return (float(config.get("dim", REFERENCE_DIM)) / REFERENCE_DIM) ** 2


def _scale(config: Mapping[str, Any]) -> float:
    """A step's or held-out loss's cost scales with width squared times batch."""
    return _width_scale(config) * float(config.get("batch_size", REFERENCE_BATCH)) / REFERENCE_BATCH


def seconds_per_iter(config: Mapping[str, Any]) -> float:
    """Estimated CPU seconds per generator iteration of a resolved run config (dict)."""
    base = SECONDS_PER_ITER.get((config.get("arch", ""), config.get("procedure", "")))
    if base is None:
        return DEFAULT_SECONDS
    return base * _scale(config)


def cell_seconds(config: Mapping[str, Any]) -> float:
    """Training seconds of a cell (its iterations only): the order cells start in."""
    return seconds_per_iter(config) * float(config.get("iters", 0))


def cell_wall_seconds(config: Mapping[str, Any], schedule: Schedule) -> float:
    """Wall seconds of a cell on one CPU worker: its process's start, its training, its
    held-out losses, and generating and judging its evaluations' and grids' samples."""
    key = (config.get("arch", ""), config.get("procedure", ""))
    step = seconds_per_iter(config)
    # a cell not in the tables (cifar, toy): a held-out loss as half a step, a sample as a
    # step's share of one image
    heldout = HELDOUT_SECONDS[key] * _scale(config) if key in HELDOUT_SECONDS else step / 2
    per_sample = (
        SAMPLE_SECONDS[key[0]] * _width_scale(config)
        if key[0] in SAMPLE_SECONDS
        else step / float(config.get("batch_size", REFERENCE_BATCH))
    )
    generated = sum(schedule.evals) + GRID_SAMPLES * schedule.grids
    scoring = (
        sum(schedule.evals) * JUDGE_SECONDS_PER_SAMPLE
        + len(schedule.evals) * EVAL_OVERHEAD_SECONDS
        + (FIRST_EVAL_SECONDS if schedule.evals else 0.0)
    )
    return (
        STARTUP_SECONDS
        + cell_seconds(config)
        + schedule.heldouts * heldout
        + generated * per_sample
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
    dim: int = REFERENCE_DIM,
    batch: int = REFERENCE_BATCH,
    workers: int = 2,
    warmup: int = 3,
    steps: int = 10,
) -> dict[tuple[str, str], tuple[float, float, float]]:
    """Measure every (arch, procedure) on this machine as the tables' reference condition
    has it: one thread per cell, ``workers`` cells at once (spawned processes, the costliest
    cells first so that the pool stays full), and print new SECONDS_PER_ITER,
    HELDOUT_SECONDS and SAMPLE_SECONDS tables (the last: the median over an architecture's
    cells)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    cells = [(a, p) for a in archs for p in procedures]
    order = sorted(cells, key=lambda c: SECONDS_PER_ITER.get(c, DEFAULT_SECONDS), reverse=True)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {c: pool.submit(_measure_cell, *c, dim, batch, warmup, steps) for c in order}
        measured = {c: futures[c].result() for c in cells}
    for i, name in enumerate(("SECONDS_PER_ITER", "HELDOUT_SECONDS")):
        print(f"{name}: dict[tuple[str, str], float] = {{")
        for (arch, proc), values in measured.items():
            print(f'    ("{arch}", "{proc}"): {values[i]:.3g},')
        print("}")
    print("SAMPLE_SECONDS: dict[str, float] = {")
    for arch in archs:
        per = statistics.median(v[2] for (a, _), v in measured.items() if a == arch)
        print(f'    "{arch}": {per:.3g},')
    print("}", flush=True)
    return measured


def main(argv: list[str] | None = None) -> None:
    """python -m reproduce.matrix.costs [--workers N] [ARCH,...] [PROCEDURE,...]"""
    import argparse

    from architectures import PAIRS

    from ..gan.procedures import PROCEDURES

    class Parser(argparse.ArgumentParser):  # one-line errors, exit 2 (cli.common imports us)
        def error(self, message: str) -> NoReturn:
            self.exit(2, f"{self.prog}: error: {message}\n")

    ap = Parser(
        prog="python -m reproduce.matrix.costs",
        description="Measure new SECONDS_PER_ITER, HELDOUT_SECONDS and SAMPLE_SECONDS tables "
        "(width 8, batch 16, one thread per cell, WORKERS cells at once) and print them.",
    )
    ap.add_argument("archs", nargs="?", default=",".join(PAIRS), help="comma-separated")
    ap.add_argument("procedures", nargs="?", default=",".join(PROCEDURES), help="comma-separated")
    ap.add_argument("--workers", type=int, default=2, help="cells measured at once (default: 2)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed iterations per cell")
    ap.add_argument("--steps", type=int, default=10, help="timed iterations per cell (median)")
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
    measure(archs, procs, workers=args.workers, warmup=args.warmup, steps=args.steps)


if __name__ == "__main__":
    main()
