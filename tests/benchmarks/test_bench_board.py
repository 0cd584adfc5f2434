"""What TensorBoard logging costs a run at the default cadences (issue 19): the events of one
statistics read (``--log-every 100``: 100 iterations x 6 WGAN-GP statistics, the throughput,
then a flush) and of one sample grid (``--sample-every 1000``), against a baseline WGAN-GP
generator iteration at the benchmark width and batch, measured in the same process:

* ``overhead_fraction``: the board's time per iteration over the iteration's time (the loop
  "with" is iteration + board per iteration, "without" the iteration alone);
* ``bytes_per_200k``: the event file of a 200,000-iteration run, extrapolated from the bytes
  of one read and one grid."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from reproduce.data.datasets import load_demo
from reproduce.data.images import grid
from reproduce.training.board import Board
from reproduce.training.trainer import Trainer, configure_numerics

from .settings import DEVICE, sync
from .test_bench_steps import _config

LOG_EVERY, SAMPLE_EVERY, ITERS = 100, 1000, 200_000
KEYS = ("critic_loss", "wdist", "d_real", "d_fake", "gp", "generator_loss")


def _rows(start: int) -> list[dict]:
    return [{"iter": i, "time": 0.01, **{k: 0.1 * j + i * 1e-3 for j, k in enumerate(KEYS)}}
            for i in range(start, start + LOG_EVERY)]  # fmt: skip


def _iteration_seconds(rounds: int = 3) -> float:
    configure_numerics(DEVICE)
    trainer = Trainer(_config("baseline", "wgan-gp"), load_demo(), DEVICE)
    trainer.step()
    sync()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        trainer.step()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("events.out.tfevents.*"))


def test_tensorboard_logging_overhead(benchmark, tmp_path):
    board = Board(tmp_path / "board", 0)
    reads = iter(range(10**6))

    def one_read() -> None:
        n = next(reads)
        board.stats(_rows(n * LOG_EVERY), until=float(n + 1), window=1.0)
        board.speed((n + 1) * LOG_EVERY, float(n + 1), {"it_per_s": 10.0, "images_per_s": 800.0})

    benchmark.pedantic(one_read, rounds=20, iterations=1, warmup_rounds=1)
    per_read = benchmark.stats.stats.mean
    before = _size(tmp_path / "board")
    image = grid(torch.randint(0, 256, (64, 3, 64, 64), dtype=torch.uint8))
    t = time.perf_counter()
    board.samples(image, 0, 0.0)
    board.flush()
    per_grid = time.perf_counter() - t
    grid_bytes = _size(tmp_path / "board") - before
    read_bytes = before / (benchmark.stats.stats.rounds + 1)
    board.close()
    iteration = _iteration_seconds()
    per_iteration = per_read / LOG_EVERY + per_grid / SAMPLE_EVERY
    benchmark.extra_info.update(
        iteration_seconds=iteration,
        board_seconds_per_iteration=per_iteration,
        overhead_fraction=per_iteration / iteration,
        bytes_per_read=read_bytes,
        bytes_per_grid=grid_bytes,
        bytes_per_200k=read_bytes * ITERS / LOG_EVERY + grid_bytes * ITERS / SAMPLE_EVERY,
    )
