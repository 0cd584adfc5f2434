"""Packing cells onto GPUs: the local pool's slots, largest cells first, the measured
cells-per-GPU forms, the visible-GPU count, and the CPU workers' start order (largest first)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reproduce.errors import UserError

from .conftest import DEMO_FAST, cli_env, run_cli


def spec(arch: str, n: int = 0):
    from reproduce.matrix.dispatch import CellSpec

    return CellSpec({"arch": arch}, {}, f"/r/{arch}-{n}")


def test_cpu_cells_start_largest_first():
    from reproduce.matrix.dispatch import LocalPool, Packing

    pool = LocalPool([], Packing(), cpu_workers=2)
    cells = [spec("baseline"), spec("resnet101"), spec("gated"), spec("mlp-generator")]
    for c in cells:
        c.config.update(procedure="wgan-gp", dim=8, batch_size=16, iters=100)
    order = [c.config["arch"] for c in pool.order(cells)]
    assert order == ["resnet101", "gated", "baseline", "mlp-generator"]


def test_packed_gpus_take_largest_cells_first_and_spread_them():
    from fractions import Fraction

    from reproduce.matrix.dispatch import LocalPool, Packing

    packing = Packing(1, (("mlp-generator", 4), ("baseline", 2)))
    pool = LocalPool([0, 1], packing, cpu_workers=1)
    cells = [spec("mlp-generator", i) for i in range(5)] + [spec("resnet101"), spec("baseline")]
    order = pool.order(cells)
    assert [c.config["arch"] for c in order[:2]] == ["resnet101", "baseline"]  # largest first
    start, wait = pool.schedule(order)
    placed = {s.run_dir: (slot.gpu, slot.share) for s, slot in start}
    assert placed["/r/resnet101-0"] == (0, 1) and placed["/r/baseline-0"] == (1, Fraction(1, 2))
    assert sum(1 for s, _ in start if s.config["arch"] == "mlp-generator") == 2  # fill GPU 1
    assert pool.load == {0: 1, 1: 1} and len(wait) == 3
    for s, slot in start:  # GPU 0 frees: the next cells spread over the room there is
        if s.config["arch"] == "resnet101":
            pool.release(slot)
    start, wait = pool.schedule(wait)
    assert [slot.gpu for _, slot in start] == [0, 0, 0] and wait == []
    # uniform packing: cells spread over the GPUs before doubling up
    pool = LocalPool([0, 1], Packing(2), cpu_workers=1)
    start, _ = pool.schedule([spec("baseline", i) for i in range(3)])
    assert [slot.gpu for _, slot in start] == [0, 1, 0]


def test_a_cell_that_does_not_fit_keeps_smaller_cells_off_its_gpu():
    from fractions import Fraction

    from reproduce.matrix.dispatch import LocalPool, Packing

    pool = LocalPool([0], Packing(4, (("baseline", 2),)), cpu_workers=1)
    start, _ = pool.schedule([spec("baseline"), spec("mlp-generator")])
    quarter = start[1][1]
    assert pool.load[0] == Fraction(3, 4) and quarter.share == Fraction(1, 4)
    pool.release(quarter)  # 1/2 busy: another 1/2-cell fits, and then nothing else
    start, wait = pool.schedule([spec("baseline", 1), spec("mlp-generator", 1)])
    assert [s.config["arch"] for s, _ in start] == ["baseline"]
    assert [s.config["arch"] for s in wait] == ["mlp-generator"]
    pool = LocalPool([0], Packing(4, (("baseline", 2),)), cpu_workers=1)
    pool.schedule([spec("baseline"), spec("mlp-generator"), spec("mlp-generator", 1)])
    # 3/4 busy; a 1/2-cell waits and the 1/4-cells behind it may not take its room
    start, wait = pool.schedule([spec("baseline", 1), spec("mlp-generator", 2)])
    assert start == [] and len(wait) == 2
    cpu = LocalPool([], Packing(), cpu_workers=2)
    start, wait = cpu.schedule([spec("baseline", i) for i in range(3)])
    assert [slot.gpu for _, slot in start] == [None, None] and len(wait) == 1


def packing_benchmark(path: Path, device: str, rates: dict[str, dict[int, float]]) -> Path:
    """A pytest-benchmark JSON file of test_packing results (as `bench -k packing` saves)."""
    rows = [
        {"fullname": f"tests/benchmarks/test_bench_packing.py::test_packing[{arch}-{k}]",
         "stats": {"min": k / rate}, "extra_info": {"arch": arch, "cells": k,
         "it_per_s_total": rate, "device": device, "dim": 64, "batch": 64}}
        for arch, by_k in rates.items() for k, rate in by_k.items()
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmarks": rows}))
    return path


def test_cells_per_gpu_forms(tmp_path):

    from reproduce.cli import EXECUTORS, parse_packing

    def parse(text, sizes=((64, 64),), gpus=(0,), executor="local"):
        return parse_packing(text, list(gpus), EXECUTORS[executor], tmp_path, set(sizes))

    p = parse("3")
    assert p.cells("resnet101") == 3 and p.cells(None) == 3 and p.per_arch == ()
    p = parse("mlp-generator=4, baseline=2")
    assert (p.cells("mlp-generator"), p.cells("baseline"), p.cells("gated")) == (4, 2, 1)
    assert p.describe() == "cells packed 2 per GPU for baseline; 4 per GPU for mlp-generator; " \
        "1 per GPU otherwise"  # fmt: skip
    assert parse("2,gated=1").cells("tanh") == 2
    assert parse("1", gpus=(), executor="slurm").per_arch == ()  # the default: no check
    h100 = {"baseline": {1: 10.0, 2: 16.0, 4: 17.0}, "resnet101": {1: 3.0, 2: 3.2}}
    bench = tmp_path / "benchmarks"
    older = packing_benchmark(bench / "a.json", "NVIDIA H100 80GB HBM3", h100)
    newest_cpu = packing_benchmark(bench / "b.json", "cpu", {"baseline": {1: 1.0, 2: 5.0}})
    (bench / "partial.json").write_text("{")  # an unfinished save is skipped
    os.utime(older, (1, 1))
    p = parse("auto")  # the newest file of a GPU at the cells' size
    assert dict(p.per_arch) == {"baseline": 4, "resnet101": 1} and p.cells("gated") == 1
    assert p.source == f"{older}: NVIDIA H100 80GB HBM3, width 64, batch 64"
    assert parse(str(older)).per_arch == p.per_arch
    assert p.describe().endswith(f"(from {p.source})")
    with pytest.raises(UserError, match="holds no packing benchmark of one GPU and size"):
        parse(str(newest_cpu))
    with pytest.raises(UserError, match="was measured at width 64, batch 64; the cells: width 32"):
        parse(str(older), sizes=((32, 64),))
    with pytest.raises(UserError, match="auto: no packing benchmark of a GPU at width 16, batch 8"):
        parse("auto", sizes=((16, 8),))
    with pytest.raises(UserError, match="measure one with `BENCH_DIM=16 BENCH_BATCH=8 python"):
        parse("auto", sizes=((16, 8),))


def test_packing_by_architecture_on_one_gpu(tmp_path):
    """One fake GPU, mlp-generator packed 2 per GPU: its two cells overlap, the two baseline
    cells run alone (each before the mlp-generator cells: larger shares start first)."""
    results = tmp_path / "r"
    r = run_cli(
        "matrix", *DEMO_FAST, "--arch", "mlp-generator", "baseline", "--procedure", "dcgan",
        "lsgan", "--iters", "8", "--gpus", "0", "--cells-per-gpu", "mlp-generator=2",
        "--results", str(results), env=cli_env(REPRODUCE_FAULTS="step-sleep=0.3,fake-gpus"),
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cells packed 2 per GPU for mlp-generator; 1 per GPU otherwise" in r.stdout
    assert r.stdout.count("(GPU 0, 1/2 of it)") == 2 and r.stdout.count("(GPU 0)") == 2
    spans = {}
    for path in results.glob("*/status.json"):
        s = json.loads(path.read_text())
        arch = json.loads((path.parent / "config.json").read_text())["config"]["arch"]
        spans.setdefault(arch, []).append((s["started_at"], s["finished_at"]))
    # the cores are shared among the cells that may run at once (1 GPU x 2 packed), not
    # every core for each (their start-up FLOP count and data loading run on the CPU)
    from reproduce.config.runtime import usable_cpus

    for path in results.glob("*/config.json"):
        threads = json.loads(path.read_text())["runtime"]["threads"]
        assert threads == max(1, usable_cpus() // 2), path
    # each cell knows how many share its GPU, for its data placement (see the next test)
    shares = {}
    for path in results.glob("*/status.json"):
        arch = json.loads((path.parent / "config.json").read_text())["config"]["arch"]
        shares.setdefault(arch, set()).add(json.loads(path.read_text())["share_gpu"])
    assert shares == {"mlp-generator": {2}, "baseline": {1}}
    (m1, m2), (b1, b2) = sorted(spans["mlp-generator"]), sorted(spans["baseline"])
    assert m2[0] < m1[1]  # the packed cells ran at the same time
    assert b1[1] <= b2[0] <= b2[1] <= m1[0]  # each baseline cell alone, and first


def test_gpu_indices_count_the_gpus_of_cuda_visible_devices(tmp_path):
    """Under CUDA_VISIBLE_DEVICES=7,GPU-..., fake GPU 0 is device 7 and GPU 1 the UUID: each
    cell runs with its own entry, never with the bare index (someone else's GPU)."""
    results = tmp_path / "r"
    uuid = "GPU-0b1d5e2a-6c1f-4f3e-9a7d-2b8c4e6f1a30"
    env = cli_env(CUDA_VISIBLE_DEVICES=f"7,{uuid}", REPRODUCE_FAULTS="fake-gpus")
    args = ["matrix", *DEMO_FAST, "--arch", "baseline", "--procedure", "dcgan", "lsgan",
            "--results", str(results)]  # fmt: skip
    r = run_cli(*args, "--gpus", "2", env=env)
    assert r.returncode == 2 and not results.exists(), r.stdout + r.stderr
    assert r.stderr.strip().splitlines() == [
        "reproduce matrix: error: --gpus: indices count the GPUs of "
        f"CUDA_VISIBLE_DEVICES='7,{uuid}' (2 of them, from 0), got '2'"
    ]
    r = run_cli(*args, "--gpus", "0,1", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = [
        json.loads(p.read_text())["cuda_visible_devices"] for p in results.glob("*/status.json")
    ]
    assert sorted(seen) == ["7", uuid], seen


def test_auto_placement_counts_on_its_share_of_a_packed_gpu(monkeypatch):
    """Cells packed k per GPU start at about the same moment and each sees the whole GPU
    free: with auto placement each must count on 1/k of its memory, or two 37 GB copies of
    LSUN bedrooms land on one 80 GB GPU. (CUDA's memory query simulated: no GPU here.)"""
    import torch

    from reproduce.data import datasets
    from reproduce.data.prepare import ROW_BYTES

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (79 * gib, 80 * gib))

    class Images:  # only its length matters to the placement
        def __len__(self):
            return 37 * gib // ROW_BYTES

    cuda = torch.device("cuda:0")
    place = datasets.resolve_placement
    assert place("auto", Images(), cuda) == "device"  # 37 GB of 79 free: 47%
    assert place("auto", Images(), cuda, share=2) == "host"  # 37 of a 40 GB share: 93%
    assert place("auto", Images(), cuda, share=4) == "host"
    assert place("device", Images(), cuda, share=2) == "device"  # a choice stays a choice
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (20 * gib, 80 * gib))
    assert place("auto", Images(), torch.device("cuda:0")) == "host"  # never more than free
