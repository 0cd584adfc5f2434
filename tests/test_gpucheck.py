"""``python -m reproduce gpu-check`` (issue 21): the prepared GPU check runs end to end on the
CPU in its smoke form, every section time-boxed, its results in JSON and Markdown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from architectures import PAIRS
from reproduce.gan.procedures import PROCEDURES

from .conftest import cli_env, run_cli, run_main, tree

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU form of the check")


def _report(out: Path) -> dict:
    return json.loads((out / "gpu-check.json").read_text())


@pytest.mark.slow
def test_the_smoke_form_runs_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    # a generous budget: this test is about every section working (under the suite's load);
    # the time boxes have the next test
    proc = run_cli("gpu-check", "--smoke", "--device", "cpu", "--budget", "900", "--out",
                   str(out), timeout=1200)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _report(out)
    env = report["environment"]
    assert env["device"].startswith("cpu") and env["torch"] == torch.__version__ and env["date"]
    secs = report["sections"]
    assert list(secs) == ["cuda-tests", "step-times", "train", "inception", "packing",
                          "projection"]  # fmt: skip
    assert {n: r["status"] for n, r in secs.items()} == dict.fromkeys(secs, "ok")
    assert all(0 < r["seconds"] <= r["limit_s"] + 5 for r in secs.values())

    # 1. every test marked cuda is found and reported (skipped here: no CUDA)
    tests = secs["cuda-tests"]["result"]["tests"]
    names = {t["test"].split("::")[1].split("[")[0] for t in tests}
    assert {"test_cuda_graphs_are_bit_identical_to_eager", "test_fast_mode_trains_on_cuda",
            "test_gpus_beyond_the_visible_ones_are_refused"} <= names  # fmt: skip
    assert all(t["outcome"] == "skipped" and "CUDA" in t["message"] for t in tests)

    # 2. the port and exact mode measured per cell, with FLOPs; the compile stopped by its cap
    rows = secs["step-times"]["result"]["rows"]
    timed = [r for r in rows if "ms" in r]
    assert {(r["arch"], r["procedure"], r["kind"]) for r in timed} == {
        ("baseline", k, kind) for k in ("dcgan", "wgan-gp") for kind in ("reference", "exact")
    }
    assert all(r["ms"] > 0 and r["flops"] > 0 and r["tflops"] > 0 for r in timed)
    fast = [r for r in rows if r["kind"] == "fast"]
    assert "exceeded the 3 s cap" in fast[0]["error"]
    speedups = secs["step-times"]["result"]["speedups"]
    assert len(speedups) == 2 and all(u["speedup"] > 0 for u in speedups)

    # 3. the real CLI run: SIGTERM -> exit 75 with a checkpoint, resumed from it, went on
    train = secs["train"]["result"]
    assert train["ok"] and all(v for k, v in train["checks"].items() if k != "engine"), train
    first, resumed = train["stints"]
    assert first["exit"] == resumed["exit"] == 75
    assert 0 < first["iteration"] < resumed["iteration"]
    assert train["checkpoints"][-2:] == [first["iteration"], resumed["iteration"]]
    assert train["graphs_vs_eager"] == "needs CUDA"

    # 4.-6.
    inc = secs["inception"]["result"]
    assert inc["samples"] == 20 and inc["images_per_s"] > 0 and inc["inception_score"] > 0
    pack = secs["packing"]["result"]["rows"]
    assert [(r["arch"], sorted(r["rates"])) for r in pack] == [
        ("baseline", ["1", "2"])
    ]  # JSON keys
    proj = secs["projection"]["result"]
    assert len(proj["rows"]) == len(PAIRS) * len(PROCEDURES) and proj["hours"]["exact"] > 0
    how = [r["exact"] for r in proj["rows"]]
    assert how.count("measured (step-times)") == 2 and how.count("measured") == 1
    assert sum(h.startswith("scaled from FLOPs") for h in how) == 25

    md = (out / "gpu-check.md").read_text()
    for heading in ("## cuda-tests", "## step-times", "## train", "## projection"):
        assert heading in md
    assert "device-hours" in md and "plain eager port" in md


@pytest.mark.slow
def test_a_section_that_hangs_is_killed_at_its_time_box_and_the_rest_still_run(tmp_path):
    """The first section hangs (fault gpu-check-hang=cuda-tests): it is killed when its box
    ends, recorded as a timeout, and the step-times section after it still runs and passes.
    (cuda-tests has the smaller share of the two, so the box the test sits out is 19 s of 60)."""
    out = tmp_path / "check"
    env = cli_env(REPRODUCE_FAULTS="gpu-check-hang=cuda-tests")
    proc = run_cli("gpu-check", "--smoke", "--device", "cpu", "--sections",
                   "cuda-tests,step-times", "--budget", "60", "--out", str(out), env=env,
                   timeout=300)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not ok: cuda-tests" in proc.stdout
    secs = _report(out)["sections"]
    assert list(secs) == ["cuda-tests", "step-times"]
    hung, after = secs["cuda-tests"], secs["step-times"]
    assert hung["status"] == "timeout" and "time box" in hung["error"]
    assert hung["limit_s"] - 1 <= hung["seconds"] <= hung["limit_s"] + 5
    assert after["status"] == "ok" and after["result"]["rows"], after
    assert "| cuda-tests | timeout |" in (out / "gpu-check.md").read_text()
    # the hung child went with its process group
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    for pid in pids:
        try:
            cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        assert str(out).encode() not in cmdline, f"left behind: {cmdline!r}"


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--sections", "train,inceptoin"], "--sections: unknown section 'inceptoin'"),
        (["--budget", "5"], "--budget: between 10 and 7200 seconds, got 5"),
        (["--dim", "10"], "--dim: must be a multiple of 4, got 10"),
        (["--batch-size", "0"], "--batch-size: between 4 and 1024, got 0"),
        (["--device", "cuda"], "--device: CUDA requested but not available"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(tmp_path, argv, match):
    before = tree(tmp_path)
    code, out, err = run_main("gpu-check", "--out", str(tmp_path / "check"), *argv)
    assert code == 2, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reproduce gpu-check: error:"), err
    assert match in lines[0], err
    assert tree(tmp_path) == before


def test_an_existing_output_directory_is_refused(tmp_path):
    out = tmp_path / "check"
    out.mkdir()
    (out / "gpu-check.json").write_text("{}")
    code, _, err = run_main("gpu-check", "--smoke", "--out", str(out))
    assert code == 2 and f"--out: {out} exists and is not an empty directory" in err
    assert (out / "gpu-check.json").read_text() == "{}"
    assert os.listdir(out) == ["gpu-check.json"]
