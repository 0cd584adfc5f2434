"""What a cell costs on a CPU: measured seconds per generator iteration of every
architecture x procedure, used to start the largest cells first on a CPU (so that the
ResNet-101 cells do not run last on one core while the other idles) and for the time
estimate of ``matrix --dry-run``.

The table was measured on this project's reference machine (2-core x86-64 CPU, one thread
per cell, two cells at once, torch 2.14.1, exact mode) at width 8 and batch 16, the size of
the demo and claims profiles, by ``python -m reproduce.costs`` (which prints a new table).
Other sizes are scaled by (dim / 8)^2 * (batch / 16): a rough guide, said so where printed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any

REFERENCE_DIM, REFERENCE_BATCH = 8, 16
REFERENCE_MACHINE = "2-core x86-64 CPU, 1 thread per cell"

# seconds per generator iteration (median of 3 after one warm-up), (arch, procedure)
SECONDS_PER_ITER: dict[tuple[str, str], float] = {
    ("baseline", "dcgan"): 0.0978,
    ("baseline", "lsgan"): 0.0983,
    ("baseline", "wgan"): 0.297,
    ("baseline", "wgan-gp"): 0.536,
    ("constant-filters", "dcgan"): 0.086,
    ("constant-filters", "lsgan"): 0.0835,
    ("constant-filters", "wgan"): 0.272,
    ("constant-filters", "wgan-gp"): 0.468,
    ("mlp-generator", "dcgan"): 0.078,
    ("mlp-generator", "lsgan"): 0.0711,
    ("mlp-generator", "wgan"): 0.2,
    ("mlp-generator", "wgan-gp"): 0.416,
    ("no-norm", "dcgan"): 0.0844,
    ("no-norm", "lsgan"): 0.0863,
    ("no-norm", "wgan"): 0.294,
    ("no-norm", "wgan-gp"): 0.507,
    ("gated", "dcgan"): 0.159,
    ("gated", "lsgan"): 0.159,
    ("gated", "wgan"): 0.452,
    ("gated", "wgan-gp"): 0.837,
    ("tanh", "dcgan"): 0.113,
    ("tanh", "lsgan"): 0.108,
    ("tanh", "wgan"): 0.312,
    ("tanh", "wgan-gp"): 0.599,
    ("resnet101", "dcgan"): 1.32,
    ("resnet101", "lsgan"): 1.29,
    ("resnet101", "wgan"): 4.7,
    ("resnet101", "wgan-gp"): 7.61,
}
DEFAULT_SECONDS = 0.5  # an architecture or procedure not in the table (cifar, toy cells)
STARTUP_SECONDS = 6.0  # a cell's process: imports, data, networks (measured: 5-7 s)
EVAL_SECONDS = 2.0  # one periodic demo-judge evaluation at width 8 (500 samples)
FINAL_EVAL_SECONDS = 6.0  # the final one (2,000 samples)


def seconds_per_iter(config: Mapping[str, Any]) -> float:
    """Estimated CPU seconds per generator iteration of a resolved run config (dict)."""
    base = SECONDS_PER_ITER.get((config.get("arch", ""), config.get("procedure", "")))
    if base is None:
        return DEFAULT_SECONDS
    dim = float(config.get("dim", REFERENCE_DIM))
    batch = float(config.get("batch_size", REFERENCE_BATCH))
    return base * (dim / REFERENCE_DIM) ** 2 * (batch / REFERENCE_BATCH)


def cell_seconds(config: Mapping[str, Any]) -> float:
    return seconds_per_iter(config) * float(config.get("iters", 0))


def makespan(cells: list[float], workers: int) -> float:
    """Wall time of cells of the given lengths on ``workers`` workers, largest first (the
    order a CPU pool starts them in)."""
    loads = [0.0] * max(1, workers)
    for c in sorted(cells, reverse=True):
        i = loads.index(min(loads))
        loads[i] += c
    return max(loads)


def measure(archs: list[str], procedures: list[str], dim: int = 8, batch: int = 16) -> None:
    """Print a new SECONDS_PER_ITER table measured on this machine (one thread)."""
    import statistics

    import torch

    from .config import resolve_run_config
    from .data import load_demo
    from .trainer import Trainer

    torch.set_num_threads(1)
    ds = load_demo("train")
    for arch in archs:
        for proc in procedures:
            cfg = resolve_run_config(
                {"arch": arch, "procedure": proc, "dim": dim, "batch_size": batch, "iters": 10},
                dataset="demo",
                data_fingerprint=ds.fingerprint,
            )
            trainer = Trainer(cfg, ds, torch.device("cpu"))
            trainer.step()  # warm-up
            times = []
            for _ in range(3):
                t = time.perf_counter()
                trainer.step()
                times.append(time.perf_counter() - t)
            print(f'    ("{arch}", "{proc}"): {statistics.median(times):.3g},', flush=True)


if __name__ == "__main__":  # python -m reproduce.costs [ARCH,...] [PROCEDURE,...]
    from architectures import PAIRS

    from .procedures import PROCEDURES

    archs = sys.argv[1].split(",") if len(sys.argv) > 1 else list(PAIRS)
    procs = sys.argv[2].split(",") if len(sys.argv) > 2 else list(PROCEDURES)
    measure(archs, procs)
