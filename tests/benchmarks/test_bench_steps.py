"""One full generator iteration (the critic steps plus one generator step) of every
architecture x procedure cell, with FLOPs, achieved TFLOP/s and MFU in the output.

Paper width and batch (64, 64) on a GPU; a small width and batch on a CPU (BENCH_DIM and
BENCH_BATCH override, BENCH_DEVICE picks the device). GPU timings synchronise the device."""

from __future__ import annotations

import os

import pytest
import torch

from architectures import PAIRS
from reproduce import flops
from reproduce.config import resolve_run_config
from reproduce.data import load_demo
from reproduce.procedures import PROCEDURES
from reproduce.train import Trainer, configure_numerics

DEVICE = torch.device(
    os.environ.get("BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
)
ON_GPU = DEVICE.type == "cuda"
DIM = int(os.environ.get("BENCH_DIM", "64" if ON_GPU else "16"))
BATCH = int(os.environ.get("BENCH_BATCH", "64" if ON_GPU else "16"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20" if ON_GPU else "3"))


def _sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize(DEVICE)


@pytest.mark.parametrize("procedure", list(PROCEDURES))
@pytest.mark.parametrize("arch", list(PAIRS))
def test_generator_iteration(benchmark, arch, procedure):
    ds = load_demo()
    cfg = resolve_run_config(
        {"arch": arch, "procedure": procedure, "dim": DIM, "batch_size": BATCH, "iters": 10**6},
        dataset=ds.kind, data_fingerprint=ds.fingerprint,
    )  # fmt: skip
    configure_numerics(DEVICE)
    trainer = Trainer(cfg, ds, DEVICE)
    trainer.step()  # iteration 0 (no generator step) also warms the allocator and cuDNN
    _sync()

    def iteration():
        trainer.step()
        _sync()

    benchmark.pedantic(iteration, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    cost = flops.iteration_cost(cfg)
    peak = flops.peak_tflops(DEVICE)
    use = flops.utilisation(cost.flops, 1.0 / benchmark.stats.stats.min, peak)
    benchmark.extra_info.update(
        device=flops.device_name(DEVICE), dim=DIM, batch=BATCH, peak_tflops=peak,
        torch=torch.__version__, **cost.to_dict(), **use,
    )  # fmt: skip
