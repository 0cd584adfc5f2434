"""python -m reproduce bench: the comparison logic, and a real run of one benchmark through
pytest-benchmark, compared against a baseline it must fail."""

from __future__ import annotations

import json

import pytest

from architectures import PAIRS
from reproduce.errors import UserError
from reproduce.gan.procedures import PROCEDURES
from reproduce.speed import bench

from .conftest import cli_env, run_cli, run_main, tree


def fake(path, times: dict[str, float], extra: dict[str, dict] | None = None):
    path.write_text(json.dumps({"benchmarks": [
        {"fullname": f"tests/benchmarks/x.py::{k}", "stats": {"min": v},
         "extra_info": (extra or {}).get(k, {})}
        for k, v in times.items()
    ]}))  # fmt: skip
    return path


def test_speedups_paper_matrix_hours_and_the_packing_recommendation(tmp_path):

    gpu = {"dim": 64, "batch": 64, "device": "NVIDIA H100 80GB HBM3"}
    times, extra = {}, {}
    for a in PAIRS:
        for p in PROCEDURES:
            times[f"test_user_port_iteration[{a}-{p}]"] = 0.060
            times[f"test_reference_iteration[{a}-{p}]"] = 0.090
            times[f"test_generator_iteration[{a}-{p}]"] = 0.030
            for kind in ("user_port", "reference", "generator"):
                extra[f"test_{kind}_iteration[{a}-{p}]"] = gpu
    times["test_generator_iteration_fast[baseline-wgan-gp-fast-bf16]"] = 0.018
    times["test_generator_iteration_fast[baseline-dcgan-fast]"] = 0.015
    for arch, rates in (("baseline", {1: 10.0, 2: 16.0, 4: 17.0}),
                        ("resnet101", {1: 3.0, 2: 3.2})):  # fmt: skip
        for k, rate in rates.items():
            name = f"test_packing[{arch}-{k}]"
            times[name] = k / rate
            extra[name] = {"arch": arch, "cells": k, "it_per_s_total": rate}
    results = bench.load_results(fake(tmp_path / "r.json", times, extra), "x")
    rows = {r["cell"]: r for r in bench.speedup_rows(results)}
    n = len(PAIRS) * len(PROCEDURES)  # the paper's 28 cells
    assert len(rows) == n
    # over the user port (symmetric padding, 60 ms) and over the faithful port (90 ms)
    assert rows["baseline-wgan-gp"]["exact_speedup"] == pytest.approx(2.0)
    assert rows["baseline-wgan-gp"]["exact_speedup_faithful"] == pytest.approx(3.0)
    assert rows["baseline-wgan-gp"]["fast-bf16_speedup"] == pytest.approx(60 / 18)
    assert rows["baseline-wgan-gp"]["fast-bf16_speedup_faithful"] == pytest.approx(5.0)
    assert rows["baseline-dcgan"]["fast_speedup"] == pytest.approx(4.0)
    assert rows["baseline-dcgan"]["fast-bf16_speedup"] is None
    hours = bench.paper_matrix_hours(results)
    assert hours == {"user": pytest.approx(n * 0.06 * 200_000 / 3600),
                     "reference": pytest.approx(n * 0.09 * 200_000 / 3600),
                     "exact": pytest.approx(n * 0.03 * 200_000 / 3600)}  # fmt: skip
    packing = {r["arch"]: r["recommended"] for r in bench.packing_rows(results)}
    assert packing == {"baseline": 4, "resnet101": 1}  # +70% at k=4; +7% is below 10%
    text = bench.derived_tables(results)
    line = next(ln for ln in text.splitlines() if ln.startswith("baseline-wgan-gp "))
    assert line.split()[1:] == ["60.00", "90.00", "30.00", "2.00x", "3.00x", "-", "-", "-",
                                "18.00", "3.33x", "5.00x"]  # fmt: skip
    assert "GPU-hours" in text
    assert "--cells-per-gpu" in text


def test_ratios_and_the_threshold(tmp_path):
    base = bench.load_results(fake(tmp_path / "b.json", {"a": 1.0, "b": 2.0, "gone": 1.0}), "x")
    new = bench.load_results(fake(tmp_path / "n.json", {"a": 1.05, "b": 2.5, "added": 3.0}), "x")
    rows, failed = bench.compare(new, base, 0.10)
    ratios = {r.name: r.ratio for r in rows}
    assert ratios == {"a": pytest.approx(1.05), "b": pytest.approx(1.25), "gone": None,
                      "added": None}  # fmt: skip
    assert [r.name for r in failed] == ["b"]
    assert bench.compare(new, base, 0.30)[1] == []
    table = bench.ratio_table(rows, 0.10)
    lines = {ln.split()[0]: ln for ln in table.splitlines()[1:]}
    assert "SLOWER" in lines["b"] and "SLOWER" not in lines["a"]
    assert "(new)" in lines["added"] and "(not run)" in lines["gone"]
    assert bench.parse_threshold("10%") == bench.parse_threshold("10") == pytest.approx(0.1)
    with pytest.raises(UserError, match="--fail-above: must be positive"):
        bench.parse_threshold("0")


def test_bad_inputs_fail_before_running(tmp_path):
    before = tree(tmp_path)
    for argv, match in (
        (["--compare", str(tmp_path / "nope.json")], "--compare: "),
        (["--fail-above", "ten"], "--fail-above: not a percentage"),
        (["--name", "../x"], "--name: not a valid file name"),
    ):
        code, _, err = run_main("bench", "--results", str(tmp_path / "r"), *argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
    (tmp_path / "junk.json").write_text("{}")
    code, _, err = run_main("bench", "--compare", str(tmp_path / "junk.json"))
    assert code == 2 and "is not a pytest-benchmark JSON file" in err
    assert tree(tmp_path) == [*before, "junk.json"]


def test_a_real_benchmark_run_saves_reports_and_fails_a_faster_baseline(tmp_path):
    env = cli_env(BENCH_DIM="4", BENCH_BATCH="4", BENCH_ROUNDS="2")
    sel = "test_generator_iteration and baseline-dcgan"
    # a relative --results, from a directory other than the checkout (where pytest runs)
    r = run_cli("bench", "-k", sel, "--results", "res", "--name", "first", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = tmp_path / "res" / "benchmarks" / "first.json"
    results = bench.load_results(saved, "x")
    (name,) = results
    assert name == "test_generator_iteration[baseline-dcgan]"
    extra = results[name]["extra"]
    assert extra["flops_per_iter"] > 0 and extra["tflops"] > 0 and extra["dim"] == 4
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(name)][-1]  # ours, after pytest's
    assert f"{extra['tflops']:.3f}" in line
    assert extra["engine"] == "eager" and extra["mode"] == "exact"
    # a baseline a million times as fast (no real iteration takes a microsecond of this one's):
    # the new run must fail a 10% threshold however loaded the machine is (a 10x margin was
    # not enough: on a loaded 2-core CI machine the first run's minimum was 2.2 s, the second
    # run's 71 ms)
    data = json.loads(saved.read_text())
    for b in data["benchmarks"]:
        b["stats"]["min"] /= 1e6
    (tmp_path / "fast.json").write_text(json.dumps(data))
    compare = ["--compare", str(tmp_path / "fast.json"), "--fail-above", "10%"]
    r = run_cli("bench", "-k", sel, "--results", str(tmp_path), "--name", "second", *compare,
                env=env)  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith(name) and "SLOWER" in ln)
    assert float(row.split()[3]) > 1.1
    assert "1 benchmark(s) slower than the baseline by more than 10%" in r.stdout


def test_the_reference_packing_and_evaluation_benchmarks_run(tmp_path):
    """The plain-eager reference and the exact step of one cell (the speed-up table), the
    packing benchmark with real worker processes at k = 1 and 2, and the Inception-score
    evaluation through torch-fidelity, and the cost of TensorBoard logging, all at toy sizes."""
    env = cli_env(BENCH_DIM="4", BENCH_BATCH="4", BENCH_ROUNDS="1", BENCH_PACK_K="1,2",
                  BENCH_PACK_ITERS="2", BENCH_EVAL_SAMPLES="40",
                  BENCH_JUDGE_SAMPLES="100")  # fmt: skip
    sel = ("(test_generator_iteration or test_reference_iteration or test_user_port_iteration) "
           "and mlp-generator-lsgan "
           "or test_packing and mlp-generator or test_inception_score "
           "or test_demo_judge or test_tensorboard_logging")  # fmt: skip
    r = run_cli("bench", "-k", sel, "--results", str(tmp_path), "--name", "b", env=env,
                timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = bench.load_results(tmp_path / "benchmarks" / "b.json", "x")
    assert set(results) == {
        "test_generator_iteration[mlp-generator-lsgan]",
        "test_reference_iteration[mlp-generator-lsgan]",
        "test_user_port_iteration[mlp-generator-lsgan]",
        "test_packing[mlp-generator-1]", "test_packing[mlp-generator-2]",
        "test_inception_score_evaluation", "test_demo_judge_evaluation",
        "test_tensorboard_logging_overhead",
    }  # fmt: skip
    assert results["test_reference_iteration[mlp-generator-lsgan]"]["extra"]["mode"] == "reference"
    (row,) = bench.speedup_rows(results)
    assert row["cell"] == "mlp-generator-lsgan" and row["exact_speedup"] > 0
    assert row["exact_speedup_faithful"] > 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("mlp-generator-lsgan "))
    speedups = [f"{row['exact_speedup']:.2f}x", f"{row['exact_speedup_faithful']:.2f}x"]
    assert line.split()[-2:] == speedups, line
    (pack,) = bench.packing_rows(results)
    assert set(pack["rates"]) == {1, 2} and all(v > 0 for v in pack["rates"].values())
    assert pack["recommended"] in (1, 2)
    ev = results["test_inception_score_evaluation"]["extra"]
    assert ev["samples"] == 40 and ev["generate_s"] > 0 and ev["score_s"] > 0
    judged = results["test_demo_judge_evaluation"]["extra"]
    assert judged["samples"] == 100 and judged["score_s"] > 0 and judged["modes_s"] > 0
    board = results["test_tensorboard_logging_overhead"]["extra"]
    assert board["overhead_fraction"] > 0 and board["bytes_per_read"] > 0
    assert "TensorBoard logging at the default cadences: " in r.stdout


def test_the_fast_mode_benchmark_runs(tmp_path):
    """The README's ``BENCH_FAST=1 python -m reproduce bench -k fast``: a cell's fast mode
    compiles and is timed, at toy size (the benchmark broke once, unseen, when
    configure_numerics came to take a bool instead of the mode's name: the suite ran every
    benchmark but this one). fast-bf16 goes through the same benchmark code; its compiled step
    is tested in tests/test_speed.py."""
    env = cli_env(BENCH_FAST="1", BENCH_DIM="4", BENCH_BATCH="4", BENCH_ROUNDS="1")
    sel = "test_generator_iteration_fast and mlp-generator-lsgan and not bf16"
    r = run_cli("bench", "-k", sel, "--results", str(tmp_path), "--name", "f", env=env,
                timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = bench.load_results(tmp_path / "benchmarks" / "f.json", "x")
    (name,) = results
    assert name == "test_generator_iteration_fast[mlp-generator-lsgan-fast]"
    extra = results[name]["extra"]
    assert extra["mode"] == "fast" and extra["engine"] == "compiled", extra
    assert extra["flops_per_iter"] > 0 and extra["tflops"] > 0
