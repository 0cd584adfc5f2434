"""Packing: k cells trained concurrently on one device (what ``matrix --cells-per-gpu k``
does), against one. Each cell is its own process, as under the local executor; all start
together and train BENCH_PACK_ITERS generator iterations each; the time is until the last
finishes. ``python -m reproduce bench`` turns the results into total iterations per second
and a recommended --cells-per-gpu per architecture.

The WGAN-GP cell of each architecture (the most work per iteration); BENCH_PACK_K (default
1,2,4) lists the k measured; each cell gets cores / k CPU threads (BENCH_THREADS overrides).
Paper width and batch on a GPU, small ones on a CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from architectures import PAIRS
from reproduce.training import flops

from .settings import BATCH, DEVICE, DIM, ON_GPU

REPO = Path(__file__).resolve().parents[2]
ITERS = int(os.environ.get("BENCH_PACK_ITERS", "50" if ON_GPU else "4"))
KS = [int(k) for k in os.environ.get("BENCH_PACK_K", "1,2,4").split(",")]


class Cells:
    """k worker processes of one cell, set up and warm, waiting for the start signal."""

    def __init__(self, arch: str, procedure: str, k: int) -> None:
        threads = os.environ.get("BENCH_THREADS") or str(max(1, (os.cpu_count() or 1) // k))
        cmd = [sys.executable, "-m", "tests.benchmarks.packing_worker", "--arch", arch,
               "--procedure", procedure, "--dim", str(DIM), "--batch-size", str(BATCH),
               "--device", str(DEVICE), "--iters", str(ITERS), "--threads", threads]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
                      for _ in range(k)]  # fmt: skip
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"

    def run(self) -> None:
        """Start every cell and wait until all have trained their iterations (timed)."""
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in self.procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "done"

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("arch", list(PAIRS))
def test_packing(benchmark, arch, k):
    """Timed: k cells x BENCH_PACK_ITERS iterations each, started together (set-up and
    warm-up excluded)."""
    cells: list[Cells] = []

    def setup():
        cells.append(Cells(arch, "wgan-gp", k))
        return (), {}

    try:
        benchmark.pedantic(lambda: cells[-1].run(), setup=setup, rounds=1, iterations=1)
    finally:
        for c in cells:
            c.close()
    rate = k * ITERS / benchmark.stats.stats.min
    benchmark.extra_info.update(
        arch=arch, procedure="wgan-gp", cells=k, iters_per_cell=ITERS, it_per_s_total=rate,
        it_per_s_per_cell=rate / k, device=flops.device_name(DEVICE), dim=DIM, batch=BATCH,
    )  # fmt: skip
