"""One full generator iteration (the critic steps plus one generator step) of every
architecture x procedure cell, with FLOPs, achieved TFLOP/s and MFU in the output:

* ``test_generator_iteration``: the package's exact mode with its default engine (CUDA graphs
  on a GPU, eager on the CPU);
* ``test_user_port_iteration``: the same cell in plain eager PyTorch written the way public
  ports are (tests/reference.py) with PyTorch's usual symmetric padding (``--padding
  symmetric``): what a user would run instead, the yardstick of the speed-up targets;
* ``test_reference_iteration``: that port with the package's faithful TF-SAME padding (it
  pays what the faithful padding costs, as exact mode does);
* ``test_generator_iteration_fast`` (with BENCH_FAST=1): --mode fast and fast-bf16.

Paper width and batch (64, 64) on a GPU; a small width and batch on a CPU (BENCH_DIM and
BENCH_BATCH override, BENCH_DEVICE picks the device). GPU timings synchronise the device.
``python -m reproduce bench`` prints the speed-up of each cell over the reference."""

from __future__ import annotations

import os

import pytest
import torch

from architectures import PAIRS
from reproduce.config.run import RunConfig, resolve_run_config
from reproduce.data.datasets import load_demo
from reproduce.gan.procedures import PROCEDURES
from reproduce.training import flops
from reproduce.training.trainer import Trainer, configure_numerics

from ..reference import ReferenceCell
from .settings import BATCH, DEVICE, DIM, ON_GPU, sync

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20" if ON_GPU else "3"))
FAST = os.environ.get("BENCH_FAST", "0") == "1"
CELLS = [(a, p) for a in PAIRS for p in PROCEDURES]


def _config(arch: str, procedure: str, mode: str = "exact", padding: str = "tf-same") -> RunConfig:
    ds = load_demo()
    return resolve_run_config(
        {"arch": arch, "procedure": procedure, "dim": DIM, "batch_size": BATCH, "iters": 10**6,
         "mode": mode, "padding": padding},
        dataset=ds.kind, data_fingerprint=ds.fingerprint,
    )  # fmt: skip


def _time(benchmark, step, cfg: RunConfig, **info) -> None:
    def iteration():
        step()
        sync()

    benchmark.pedantic(iteration, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    cost = flops.iteration_cost(cfg)
    precision = flops.mode_precision(cfg.mode)  # the reference computes like exact mode
    peak = flops.peak_tflops(DEVICE, precision)
    use = flops.utilisation(cost.flops, 1.0 / benchmark.stats.stats.min, peak)
    benchmark.extra_info.update(
        device=flops.device_name(DEVICE), dim=DIM, batch=BATCH, peak_tflops=peak,
        peak_precision=precision,
        torch=torch.__version__, arch=cfg.arch, procedure=cfg.procedure, **info,
        **cost.to_dict(), **use,
    )  # fmt: skip


@pytest.mark.parametrize("arch,procedure", CELLS, ids=[f"{a}-{p}" for a, p in CELLS])
def test_generator_iteration(benchmark, arch, procedure):
    cfg = _config(arch, procedure)
    configure_numerics(DEVICE)
    trainer = Trainer(cfg, load_demo(), DEVICE)
    trainer.step()  # iteration 0 (no generator step) also warms the allocator and cuDNN
    sync()
    _time(benchmark, trainer.step, cfg, mode="exact", engine=trainer.steps.name)


@pytest.mark.parametrize("arch,procedure", CELLS, ids=[f"{a}-{p}" for a, p in CELLS])
def test_reference_iteration(benchmark, arch, procedure):
    cfg = _config(arch, procedure)
    configure_numerics(DEVICE)
    cell = ReferenceCell(cfg, load_demo(), DEVICE)
    cell.step()
    sync()
    _time(benchmark, cell.step, cfg, mode="reference", engine="plain eager port")


@pytest.mark.parametrize("arch,procedure", CELLS, ids=[f"{a}-{p}" for a, p in CELLS])
def test_user_port_iteration(benchmark, arch, procedure):
    cfg = _config(arch, procedure, padding="symmetric")
    configure_numerics(DEVICE)
    cell = ReferenceCell(cfg, load_demo(), DEVICE)
    cell.step()
    sync()
    _time(benchmark, cell.step, cfg, mode="user port", engine="plain eager port, symmetric padding")


@pytest.mark.skipif(not FAST, reason="set BENCH_FAST=1 (compiles every cell: minutes each)")
@pytest.mark.parametrize("mode", ["fast", "fast-bf16"])
@pytest.mark.parametrize("arch,procedure", CELLS, ids=[f"{a}-{p}" for a, p in CELLS])
def test_generator_iteration_fast(benchmark, arch, procedure, mode):
    cfg = _config(arch, procedure, mode)
    configure_numerics(DEVICE, cfg.fast)
    trainer = Trainer(cfg, load_demo(), DEVICE, compile_mode=os.environ.get("BENCH_COMPILE_MODE",
                                                                            "default"))  # fmt: skip
    for _ in range(2):  # compiles the critic and the generator step
        trainer.step()
    sync()
    _time(benchmark, trainer.step, cfg, mode=mode, engine=trainer.steps.name)
    configure_numerics(DEVICE)
