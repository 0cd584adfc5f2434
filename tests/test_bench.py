"""python -m reproduce bench: the comparison logic, and a real run of one benchmark through
pytest-benchmark, compared against a baseline it must fail."""

from __future__ import annotations

import json

import pytest

from reproduce import bench
from reproduce.errors import UserError

from .conftest import cli_env, run_cli
from .test_bad_inputs import run_main, tree


def fake(path, times: dict[str, float]):
    path.write_text(json.dumps({"benchmarks": [
        {"fullname": f"tests/benchmarks/x.py::{k}", "stats": {"min": v}, "extra_info": {}}
        for k, v in times.items()
    ]}))  # fmt: skip
    return path


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
    sel = "generator_iteration and baseline and dcgan"
    r = run_cli("bench", "-k", sel, "--results", str(tmp_path), "--name", "first", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = tmp_path / "benchmarks" / "first.json"
    results = bench.load_results(saved, "x")
    (name,) = results
    assert name == "test_generator_iteration[baseline-dcgan]"
    extra = results[name]["extra"]
    assert extra["flops_per_iter"] > 0 and extra["tflops"] > 0 and extra["dim"] == 4
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(name)][-1]  # ours, after pytest's
    assert f"{extra['tflops']:.3f}" in line
    # a baseline twice as fast: the new run is ~2x slower and must fail a 10% threshold
    data = json.loads(saved.read_text())
    for b in data["benchmarks"]:
        b["stats"]["min"] /= 2
    (tmp_path / "fast.json").write_text(json.dumps(data))
    compare = ["--compare", str(tmp_path / "fast.json"), "--fail-above", "10%"]
    r = run_cli("bench", "-k", sel, "--results", str(tmp_path), "--name", "second", *compare,
                env=env)  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith(name) and "SLOWER" in ln)
    assert float(row.split()[3]) > 1.1
    assert "1 benchmark(s) slower than the baseline by more than 10%" in r.stdout
