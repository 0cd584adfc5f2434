"""The matrix runner without SLURM: pure expansion, bad inputs, idempotence, concurrency,
the local executor's GPU slots, interruption and the status grid."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from architectures import PAIRS
from reproduce.errors import UserError
from reproduce.experiments import Selection
from reproduce.matrix import PROFILES, cell_state, expand
from reproduce.procedures import PROCEDURES
from reproduce.results import read_jsonl

from .conftest import cli_env, popen_cli, run_cli, run_main, tree

FP = {"dataset": "demo", "data_fingerprint": "demo-0000"}
FAST = ["--profile", "demo", "--iters", "3", "--no-progress"]


def test_lsun_expansion_is_the_7x4_cross_product_in_paper_order():
    configs = expand("lsun", Selection(), {"dim": 8}, **FP)
    assert [(c.arch, c.procedure) for c in configs] == [(a, p) for a in PAIRS for p in PROCEDURES]
    assert len({c.run_id for c in configs}) == 28
    # every cell at its procedure's own defaults
    by = {(c.arch, c.procedure): c for c in configs}
    assert by[("gated", "wgan-gp")].critic_norm == "layer" and by[("gated", "wgan")].clip == 0.01
    assert by[("no-norm", "wgan-gp")].critic_norm == "none"
    assert by[("tanh", "lsgan")].optimizer == "rmsprop-tf"


def test_expansion_selection_seeds_and_shared_options():
    sel = Selection(archs=["tanh", "baseline"], procedures=["wgan-gp"], seeds=[0, 1, 2])
    configs = expand("lsun", sel, {"dim": 8, "iters": 7, "hparams": "official-code"}, **FP)
    assert [(c.seed, c.arch) for c in configs] == [
        (s, a) for s in (0, 1, 2) for a in ("tanh", "baseline")
    ]
    assert all(c.iters == 7 and c.beta1 == 0.0 for c in configs)
    assert expand("lsun", sel, {"dim": 8}, **FP) == expand("lsun", sel, {"dim": 8}, **FP)  # pure


def test_duplicates_and_meaningless_shared_options_are_refused():
    with pytest.raises(UserError, match="duplicate cells"):
        expand("lsun", Selection(archs=["tanh", "tanh"]), {}, **FP)
    with pytest.raises(UserError, match="duplicate cells"):
        expand("lsun", Selection(seeds=[1, 1]), {}, **FP)
    with pytest.raises(UserError, match="--gp-lambda means nothing for procedure dcgan"):
        expand("lsun", Selection(), {"gp_lambda": 5.0}, **FP)


def test_profiles():
    assert PROFILES["paper"].options == {"dim": 64, "batch_size": 64, "iters": 200_000}
    assert PROFILES["demo"].options["data"] == "demo"


def assert_matrix_rejected(tmp_path: Path, *argv: str, match: str) -> None:
    before = tree(tmp_path)
    code, out, err = run_main("matrix", "--results", str(tmp_path / "results"), *argv)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce matrix: error:"), err
    assert match in lines[0], err
    assert tree(tmp_path) == before  # nothing written, nothing submitted


@pytest.mark.parametrize(
    "argv,match",
    [
        (
            ["--profile", "demo", "--arch", "basline"],
            "--arch: unknown architecture 'basline' (did you mean 'baseline'?)",
        ),
        (
            ["--profile", "demo", "--procedure", "wgan-gp", "lsgn"],
            "unknown procedure 'lsgn' (did you mean 'lsgan'?)",
        ),
        (["--profile", "dmeo"], "--profile: unknown profile 'dmeo' (did you mean 'demo'?)"),
        (["--profile", "demo", "--experiment", "lsnu"], "--experiment: unknown experiment 'lsnu'"),
        (
            ["--profile", "demo", "--executor", "slrum"],
            "unknown executor 'slrum' (did you mean 'slurm'?)",
        ),
        (["--profile", "demo", "--arch", "tanh", "tanh"], "duplicate cells"),
        (["--profile", "demo", "--seeds", "3", "3"], "duplicate cells"),
        (["--profile", "demo", "--seeds", "0", "-1"], "--seeds: must be >= 0, got -1"),
        (
            ["--profile", "demo", "--executor", "slurm", "--partition", "gpu"],
            "--partition gpu (a SLURM profile key: --slurm partition=gpu)",
        ),
        (["--profile", "demo", "--qos=high"], "(a SLURM profile key: --slurm qos=high)"),
        (
            ["--profile", "demo", "--time-limit", "90"],
            "(a SLURM profile key: --slurm time_limit=90)",
        ),
        (
            ["--profile", "demo", "--exclude"],
            "--exclude (a SLURM profile key: --slurm exclude=VALUE)",
        ),
        (["--profile", "paper"], "--data: profile 'paper' trains on LSUN bedrooms"),
        (["--profile", "paper", "--data", "/nonexistent/lsun"], "is neither a built-in dataset"),
        (["--profile", "demo", "--iters", "0"], "--iters: must be at least 1"),
        (
            ["--profile", "demo", "--gp-lambda", "3"],
            "--gp-lambda means nothing for procedure dcgan",
        ),
        (["--profile", "demo", "--workers", "0"], "--workers: must be at least 1"),
        (["--profile", "demo", "--gpus", "0,0"], "--gpus: indices must be distinct"),
        (["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "0"], "must be at least 1"),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "2,resnet=2"],
            "--cells-per-gpu: unknown architecture 'resnet' (did you mean 'resnet101'?)",
        ),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "baseline=two"],
            "--cells-per-gpu: expected N, ARCH=N,..., auto or a benchmark FILE.json",
        ),
        (
            ["--profile", "demo", "--gpus", "none", "--cells-per-gpu", "2"],
            "--cells-per-gpu: no GPU to pack cells on",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--cells-per-gpu", "2"],
            "--cells-per-gpu: packs cells of the local executor, not the slurm one",
        ),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "auto"],
            "--cells-per-gpu auto: no packing benchmark of a GPU at width 8, batch 16 under",
        ),
        (
            ["--profile", "demo", "--gpus", "0", "--cells-per-gpu", "/nonexistent/gpu.json"],
            "--cells-per-gpu: /nonexistent/gpu.json does not exist",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--slurm", "partiton=gpu"],
            "unknown SLURM profile key 'partiton' (did you mean 'partition'?)",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--slurm-profile", "defualt"],
            "no profile 'defualt' (did you mean 'default'?)",
        ),
        (
            [
                "--profile",
                "demo",
                "--executor",
                "slurm",
                "--slurm",
                "time_limit=5",
                "--checkpoint-every",
                "600",
            ],
            "time_limit 5 min is shorter than one checkpoint interval",
        ),
        (
            ["--profile", "demo", "--executor", "slurm", "--slurm", "cpus_per_task=two"],
            "'cpus_per_task' must be int",
        ),
    ],
)
def test_matrix_bad_inputs(tmp_path, monkeypatch, argv, match):
    monkeypatch.setenv("REPRODUCE_FAULTS", "fake-gpus")  # --gpus 0 on a CPU-only machine
    assert_matrix_rejected(tmp_path, *argv, match=match)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", ["matrix", "figures"])
def test_gpus_on_a_machine_without_cuda_are_refused(tmp_path, monkeypatch, command):
    """--gpus 0 where torch sees no GPU is a mistake, not a CPU run labelled 'GPU 0'."""
    monkeypatch.delenv("REPRODUCE_FAULTS", raising=False)
    before = tree(tmp_path)
    argv = ["fig2", "--profile", "demo"] if command == "figures" else ["--profile", "demo"]
    code, out, err = run_main(command, *argv, "--gpus", "0",
                              "--results", str(tmp_path / "results"))  # fmt: skip
    assert code == 2, out + err
    assert err.strip().splitlines() == [
        f"reproduce {command}: error: --gpus: torch sees no CUDA GPU on this machine, got "
        "'0'; leave --gpus out (or give 'none') to train on the CPU"
    ]
    assert tree(tmp_path) == before


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpus_beyond_the_visible_ones_are_refused(tmp_path):
    n = torch.cuda.device_count()
    assert_matrix_rejected(tmp_path, "--profile", "demo", "--gpus", str(n),
                           match=f"--gpus: this machine shows {n} GPU(s)")  # fmt: skip


def test_bad_slurm_profile_file(tmp_path):
    prof = tmp_path / "mine.toml"
    prof.write_text('partition = "gpu"\nmemory = 4\n')
    assert_matrix_rejected(
        tmp_path,
        "--profile",
        "demo",
        "--executor",
        "slurm",
        "--slurm-profile",
        str(prof),
        match=f"{prof}: unknown SLURM profile key 'memory'",
    )


def test_unwritable_results_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = run_main("matrix", "--profile", "demo", "--results", str(blocker / "r"))
    assert code == 2 and "--results:" in err and len(err.strip().splitlines()) == 1


def test_dry_run_lists_every_cell_and_writes_nothing(tmp_path):
    before = tree(tmp_path)
    code, out, err = run_main("matrix", *FAST, "--results", str(tmp_path / "r"), "--dry-run")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 30 and lines[-2].startswith("28 cells, 28 to run")
    assert all(line.split()[1] == "pending" for line in lines[:-2])
    # on CPUs: the wall-time estimate from the measured per-cell costs (costs.py)
    assert lines[-1].startswith("estimated wall time: ") and "largest cells first" in lines[-1]
    assert tree(tmp_path) == before


def test_the_claims_estimate_is_the_measured_costs_on_the_workers(tmp_path):
    from reproduce import costs

    code, out, err = run_main("matrix", "--profile", "claims", "--results", str(tmp_path),
                              "--workers", "2", "--dry-run")  # fmt: skip
    assert code == 0, err
    per_cell = [costs.STARTUP_SECONDS + v * 400 + 3 * costs.EVAL_SECONDS
                + costs.FINAL_EVAL_SECONDS for v in costs.SECONDS_PER_ITER.values()]  # fmt: skip
    wall = costs.makespan(per_cell, 2)
    line = out.strip().splitlines()[-1]
    assert f"{int(wall // 3600)} h {int(wall % 3600 // 60):02d} min on 2 CPU worker(s)" in line
    assert "measured per cell" in line, line
    # the longest cell alone bounds it from below; perfect balance from below too
    assert wall >= max(per_cell) and wall >= sum(per_cell) / 2


def test_cpu_cells_start_largest_first():
    from reproduce.dispatch import LocalPool, Packing

    pool = LocalPool([], Packing(), cpu_workers=2)
    cells = [spec("baseline"), spec("resnet101"), spec("gated"), spec("mlp-generator")]
    for c in cells:
        c.config.update(procedure="wgan-gp", dim=8, batch_size=16, iters=100)
    order = [c.config["arch"] for c in pool.order(cells)]
    assert order == ["resnet101", "gated", "baseline", "mlp-generator"]


def test_second_invocation_trains_nothing(tmp_path):
    args = [
        "matrix",
        *FAST,
        "--arch",
        "baseline",
        "no-norm",
        "--procedure",
        "dcgan",
        "wgan",
        "--executor",
        "debug",
        "--results",
        str(tmp_path / "r"),
    ]
    code, out, err = run_main(*args)
    assert code == 0, out + err
    assert out.splitlines()[0] == "4 cells: 4 to run, 0 skipped (done, running or queued)"
    # the printed summary fits 100 columns: one line per cell (the files hold every column;
    # only the line naming their path may be longer)
    assert max(len(x) for x in out.splitlines() if "written to /" not in x) <= 100, out
    head = next(i for i, line in enumerate(out.splitlines()) if line.startswith("cell "))
    table = out.splitlines()[head : head + 5]
    assert table[0].split() == ["cell", "status", "iterations", "it/s", "IS", "FD", "modes",
                                "verdict"]  # fmt: skip
    assert [line.split()[:3] for line in table[1:]] == [
        [cell, "completed", "3/3"]
        for cell in ("baseline/dcgan", "baseline/wgan", "no-norm/dcgan", "no-norm/wgan")
    ]
    summary = list((tmp_path / "r" / "matrices").glob("*-summary.md"))
    assert len(summary) == 1 and summary[0].read_text().count("| completed |") == 4
    # every cell is scored by the demo judge and has a verdict (no Inception weights here)
    import pandas as pd

    rows = pd.read_csv(next((tmp_path / "r" / "matrices").glob("*-summary.csv")))
    assert (rows["judge"] == "demo-judge").all() and rows["is_mean"].notna().all()
    assert rows["modes"].str.fullmatch(r"[0-8]/8").all()
    assert rows["verdict"].isin(["trained", "low-quality", "collapsed"]).all()
    assert len(list((tmp_path / "r" / "matrices").glob("*-summary.csv"))) == 1
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("ckpt-*/state.pt")}
    code, out, err = run_main(*args)
    assert (
        code == 0
        and out.splitlines()[0] == "4 cells: 0 to run, 4 skipped (done, running or queued)"
    )
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    code, out, _ = run_main(*args, "--dry-run")
    assert out.count(" completed") == 4


def test_eight_matrix_processes_train_each_cell_exactly_once(tmp_path):
    results = tmp_path / "r"
    args = [
        "matrix",
        *FAST,
        "--arch",
        "baseline",
        "constant-filters",
        "--procedure",
        "dcgan",
        "lsgan",
        "--iters",
        "6",
        "--executor",
        "debug",
        "--results",
        str(results),
    ]
    env = cli_env(REPRODUCE_FAULTS="step-sleep=0.1")
    procs = [popen_cli(*args, env=env) for _ in range(8)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode in (0, 1) for p in procs), outs
    runs = [d for d in results.iterdir() if (d / "config.json").exists()]
    assert len(runs) == 4
    for run in runs:
        log = (run / "log.txt").read_text()
        assert log.count("started ") == 1 and "resumed" not in log, log
        assert [r["iter"] for r in read_jsonl(run / "stats.jsonl")] == list(range(6))
        assert json.loads((run / "status.json").read_text())["state"] == "completed"
    # a matrix process that found a cell busy says so; in total each cell was trained once
    trained = sum(o.count("] completed: ") for o, _ in outs)
    assert trained == 4, outs
    outcomes = {
        line.split("] ")[1].split(":")[0]
        for o, _ in outs
        for line in o.splitlines()
        if line.startswith("  [")
    }
    assert outcomes <= {"completed", "already-completed", "busy"}, outcomes


def test_local_executor_runs_one_cell_per_visible_gpu(tmp_path):
    """Three fake GPUs: three cells at once, each with its own CUDA_VISIBLE_DEVICES."""
    results = tmp_path / "r"
    r = run_cli(
        "matrix",
        *FAST,
        "--arch",
        "baseline",
        "constant-filters",
        "mlp-generator",
        "--procedure",
        "dcgan",
        "--iters",
        "16",
        "--gpus",
        "0,1,2",
        "--results",
        str(results),
        env=cli_env(REPRODUCE_FAULTS="step-sleep=0.4,fake-gpus"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    statuses = [json.loads(p.read_text()) for p in results.glob("*/status.json")]
    assert len(statuses) == 3
    assert sorted(s["cuda_visible_devices"] for s in statuses) == ["0", "1", "2"]
    assert all(s["device"] == "cpu" for s in statuses)  # no real GPU here: auto -> cpu
    # they ran at the same time: every start precedes every finish
    assert max(s["started_at"] for s in statuses) < min(s["finished_at"] for s in statuses)
    assert r.stdout.count("(GPU ") == 3


def spec(arch: str, n: int = 0):
    from reproduce.dispatch import CellSpec

    return CellSpec({"arch": arch}, {}, f"/r/{arch}-{n}")


def test_packed_gpus_take_largest_cells_first_and_spread_them():
    from fractions import Fraction

    from reproduce.dispatch import LocalPool, Packing

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

    from reproduce.dispatch import LocalPool, Packing

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
    import os

    from reproduce.cli import parse_packing

    def parse(text, sizes=((64, 64),), gpus=(0,), executor="local"):
        return parse_packing(text, list(gpus), executor, tmp_path, set(sizes))

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
        "matrix", *FAST, "--arch", "mlp-generator", "baseline", "--procedure", "dcgan", "lsgan",
        "--iters", "8", "--gpus", "0", "--cells-per-gpu", "mlp-generator=2",
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
    (m1, m2), (b1, b2) = sorted(spans["mlp-generator"]), sorted(spans["baseline"])
    assert m2[0] < m1[1]  # the packed cells ran at the same time
    assert b1[1] <= b2[0] <= b2[1] <= m1[0]  # each baseline cell alone, and first


def test_gpu_indices_count_the_gpus_of_cuda_visible_devices(tmp_path):
    """Under CUDA_VISIBLE_DEVICES=7,GPU-..., fake GPU 0 is device 7 and GPU 1 the UUID: each
    cell runs with its own entry, never with the bare index (someone else's GPU)."""
    results = tmp_path / "r"
    uuid = "GPU-0b1d5e2a-6c1f-4f3e-9a7d-2b8c4e6f1a30"
    env = cli_env(CUDA_VISIBLE_DEVICES=f"7,{uuid}", REPRODUCE_FAULTS="fake-gpus")
    args = ["matrix", *FAST, "--arch", "baseline", "--procedure", "dcgan", "lsgan",
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


def test_interrupted_local_matrix_resumes(tmp_path):
    results = tmp_path / "r"
    args = [
        "matrix",
        *FAST,
        "--arch",
        "baseline",
        "--procedure",
        "wgan-gp",
        "--iters",
        "12",
        "--checkpoint-every",
        "0",
        "--results",
        str(results),
    ]
    proc = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="step-sleep=0.3"))
    deadline = time.monotonic() + 120
    while (
        not list(results.glob("*/stats.jsonl"))
        or len(read_jsonl(next(results.glob("*/stats.jsonl")))) < 4
    ):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and 4 <= status["iteration"] < 12, status
    assert cell_state(run).state == "partial"
    assert f"  [1/1] interrupted: {run.name} (stopped by SIGTERM)" in out.splitlines(), out
    # resumed with a live line per running cell (progress and ETA, here every 0.3 s)
    env = cli_env(REPRODUCE_FAULTS="step-sleep=0.3", REPRODUCE_PROGRESS_EVERY="0.3")
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed from ckpt-" in (run / "log.txt").read_text()
    assert [row["iter"] for row in read_jsonl(run / "stats.jsonl")] == list(range(12))
    live = [line for line in r.stdout.splitlines() if line.startswith(f"  running  {run.name}")]
    assert live and all(re.fullmatch(r"  running  \S+  \d+/12  \d+%.*", x) for x in live), r.stdout
    assert any("ETA" in x for x in live)
    assert max(len(x) for x in r.stdout.splitlines() if "written to /" not in x) <= 100


def test_a_cell_that_completes_while_the_matrix_stops_is_announced(tmp_path):
    """A cell in its final evaluation when Ctrl-C comes completes instead of checkpointing;
    the matrix used to exit without a word about it."""
    results = tmp_path / "r"
    args = ["matrix", *FAST, "--arch", "baseline", "--procedure", "wgan", "--results", str(results)]
    proc = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="eval-sleep=4"))
    deadline = time.monotonic() + 120
    while len(list(results.glob("*/checkpoints/ckpt-*"))) == 0:  # saved before evaluating
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    assert cell_state(run).state == "completed"
    assert f"  [1/1] completed: {run.name}" in out.splitlines(), out


def test_status_shows_the_grid(tmp_path):
    results = tmp_path / "r"
    code, out, err = run_main(
        "matrix",
        *FAST,
        "--arch",
        "tanh",
        "--procedure",
        "dcgan",
        "lsgan",
        "--executor",
        "debug",
        "--results",
        str(results),
    )
    assert code == 0, err
    code, out, err = run_main("matrix", *FAST, "--results", str(results), "--dry-run")
    code, out, err = run_main("status", "--results", str(results))
    assert code == 0, err
    assert "seed 0: 2 completed" in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("architecture"))
    assert "DCGAN" in lines[header] and "WGAN-GP" in lines[header]
    tanh = next(line for line in lines if line.startswith("6. tanh"))
    assert tanh.count("completed") == 2
    # the judge's score, its modes and the verdict of each finished cell
    assert len(re.findall(r"completed judge \d+\.\d\d [0-8]/8 (trained|low-quality|collapsed)",
                          tanh)) == 2, tanh  # fmt: skip
    assert (
        len([line for line in lines[header + 2 :] if line[:2] in {f"{i}." for i in range(1, 8)}])
        == 7
    )


def test_status_asks_squeue_only_about_unfinished_slurm_cells(tmp_path, monkeypatch):
    """A workstation's matrix never touches SLURM: `status` does not run squeue for local cells
    or for finished SLURM cells, and says so only when an unfinished SLURM cell's state depends
    on a queue that does not answer (here an squeue that cannot reach its controller)."""
    from reproduce.dispatch import record_submission
    from reproduce.results import atomic_write_json

    results = tmp_path / "r"
    argv = ["--arch", "tanh", "--procedure", "dcgan", "--executor", "local", "--workers", "1"]
    code, out, err = run_main("matrix", *FAST, *argv, "--results", str(results))
    assert code == 0, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    assert json.loads((run / "submission.json").read_text())["executor"] == "local"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "squeue-calls"
    squeue = bin_dir / "squeue"
    squeue.write_text(
        f"#!/bin/sh\necho called >> {calls}\n"
        "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n"
    )
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")

    def status() -> str:
        code, out, err = run_main("status", "--results", str(results))
        assert code == 0, err
        return out

    out = status()
    assert "seed 0: 1 completed" in out and "squeue" not in out and not calls.exists()
    record_submission(run, "slurm", "4242", results / ".submitit" / "x")  # as a cluster run's
    out = status()
    assert "seed 0: 1 completed" in out and "squeue" not in out and not calls.exists()
    st = json.loads((run / "status.json").read_text())
    atomic_write_json(run / "status.json", {**st, "state": "interrupted"})
    out = status()
    assert calls.read_text().count("called") == 1
    assert "note: squeue did not answer; queued SLURM cells may show as pending" in out


def test_ctrl_c_to_the_process_group_while_a_cell_is_being_submitted(tmp_path):
    """Issue 18.10: a terminal Ctrl-C reaches the whole process group. While a cell was being
    submitted the controller ignored SIGINT (so that submitit's controller inherits the
    ignore), and the Ctrl-C was lost: the matrix went on with every other cell and exited 1.
    Now SIGINT is held back (blocked) while submitting and delivered right after: the
    controller stops the cells and exits 75, and the next cell is never started."""
    import subprocess
    import sys

    from .conftest import REPO

    results = tmp_path / "results"
    args = [sys.executable, "-m", "reproduce", "matrix", *FAST, "--arch", "baseline",
            "--procedure", "wgan-gp", "dcgan", "--iters", "30", "--workers", "1", "--no-eval",
            "--results", str(results)]  # fmt: skip
    env = cli_env(REPRODUCE_FAULTS="submit-sleep=2,step-sleep=0.2")
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(results.glob("*/submission.json")):  # the first cell, mid-submission
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, out + err
    assert "interrupted: the running cells checkpointed" in err
    submitted = [d for d in results.iterdir() if (d / "submission.json").exists()]
    assert len(submitted) == 1, out  # the second cell was never started
    # the first cell was stopped (before or after its first iteration): it resumes next time
    assert cell_state(submitted[0]).state in ("pending", "partial")


def test_status_into_a_closed_pipe_exits_cleanly(tmp_path):
    """Issue 24: `status | head` ended in a BrokenPipeError traceback (the reader is gone
    before the output is flushed). Here the pipe is closed before status writes anything."""
    import subprocess
    import sys

    from .conftest import REPO

    results = tmp_path / "r"
    argv = ["matrix", *FAST, "--arch", "baseline", "--procedure", "dcgan", "--no-eval",
            "--executor", "debug", "--results", str(results)]  # fmt: skip
    code, _, err = run_main(*argv)
    assert code == 0, err
    proc = subprocess.Popen([sys.executable, "-m", "reproduce", "status", "--results",
                             str(results)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_sigint_to_a_matrix_that_inherited_it_ignored_still_stops_it(tmp_path):
    """Issue 24: a matrix started in the background by a script inherits SIGINT as ignored;
    a SIGINT sent to it was ignored and the matrix ran on. Now it stops the cells (they
    checkpoint) and exits 75, as Ctrl-C does."""
    import subprocess
    import sys

    from .conftest import REPO

    results = tmp_path / "results"
    args = [sys.executable, "-m", "reproduce", "matrix", *FAST, "--arch", "baseline",
            "--procedure", "wgan-gp", "--iters", "40", "--no-eval", "--checkpoint-every", "0",
            "--results", str(results)]  # fmt: skip
    env = cli_env(REPRODUCE_FAULTS="step-sleep=0.2")

    def ignore_sigint() -> None:  # what a non-interactive shell does for `matrix ... &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=ignore_sigint)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(results.glob("*/stats.jsonl")) or len(
                read_jsonl(next(results.glob("*/stats.jsonl")))) < 3:  # fmt: skip
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # to the controller only, as `kill -INT PID` does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and 3 <= status["iteration"] < 40, status


def test_live_progress_redraws_its_block_on_a_terminal(tmp_path):
    """On a terminal the running cells' block is erased (cursor up, erase below) before each
    event line and redrawn under it; elsewhere nothing is drawn between the periodic lines."""
    import io

    from reproduce.live import LiveProgress
    from reproduce.results import RunDir

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    runs = [tmp_path / f"cell-{i}" for i in range(2)]
    for i, run in enumerate(runs):
        run.mkdir()
        RunDir(run).write_status("running", iteration=3 + i, iters=12, it_per_s=1.5)
    term = Terminal()
    with LiveProgress(stream=term, every=3600) as live:  # no periodic redraw during the test
        live.started("a", runs[0])
        live.event("  start  a")
        live.started("b", runs[1])
        live.event("  start  b")
        live.finished("a")
        live.event("  [1/2] completed: a")
    assert term.getvalue().split("\n") == [
        "  start  a",
        "  running  cell-0  3/12  25%  1.5 it/s  ETA 6s",
        "\x1b[1F\x1b[J  start  b",
        "  running  cell-0  3/12  25%  1.5 it/s  ETA 6s",
        "  running  cell-1  4/12  33%  1.5 it/s  ETA 5s",
        "\x1b[2F\x1b[J  [1/2] completed: a",
        "  running  cell-1  4/12  33%  1.5 it/s  ETA 5s",
        "\x1b[1F\x1b[J",  # the block cleared on exit
    ]
    plain = io.StringIO()
    with LiveProgress(stream=plain, every=3600) as live:
        live.started("a", runs[0])
        live.event("  start  a")
    assert plain.getvalue() == "  start  a\n"
