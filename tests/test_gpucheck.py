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

from .conftest import cli_env, popen_cli, run_cli, run_main, tree

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
    # the stopped-and-resumed run equals the same run uninterrupted, to the bit
    again = train["resume_vs_uninterrupted"]
    assert again["identical"] and again["iterations"] == resumed["iteration"], again
    # checked, then removed: a GPU loan's output is results, not the weights (2 x 111 MiB)
    assert train["checkpoint_bytes_removed"] > 0
    assert not list((out / "work" / "train").rglob("ckpt-*"))
    # the fast-mode child gets the cell's FLOPs counted beside it: its box holds only the
    # compile and the timing (it counted them after timing, and a box's end lost the timing)
    params = json.loads((out / "work" / "step-times" / "baseline-dcgan-fast.params.json")
                        .read_text())  # fmt: skip
    exact = [r for r in timed if r["kind"] == "exact" and r["procedure"] == "dcgan"]
    assert params["flops"] == exact[0]["flops"] > 0

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


def test_the_projection_counts_flops_only_within_its_box(tmp_path):
    """The projection used to count the FLOPs of all 28 cells before anything else (25 s at
    width 64 on this 2-core machine, more under load) whatever its box. Now step-times' own
    counts are reused and a cell is measured or counted only while the box allows: with no
    time left, the two cells step-times measured are all it projects, and the matrix's hours
    are not claimed."""
    import time

    from reproduce.speed import gpucheck, sections

    s = gpucheck.Settings.make("cpu", True, None, None, None, gpucheck.SECTIONS)
    steps = [{"arch": "baseline", "procedure": p, "kind": "exact", "ms": 5.0, "flops": f}
             for p, f in (("dcgan", 10**9), ("wgan-gp", 4 * 10**9))]  # fmt: skip
    box = sections.Box(time.time() + 2.0)  # less than the 5 s a section keeps in reserve
    t0 = time.monotonic()
    out = sections.section_projection(s, box, tmp_path, {"step-times": {"rows": steps}})
    assert time.monotonic() - t0 < 2.0  # nothing was counted or measured
    assert [(r["arch"], r["procedure"], r["exact"]) for r in out["rows"]] == [
        ("baseline", "dcgan", "measured (step-times)"),
        ("baseline", "wgan-gp", "measured (step-times)"),
    ]
    assert out["hours"] == {"exact": None, "fast": None}


@pytest.mark.slow
def test_every_box_of_the_gpu_run_holds_its_cost():
    """Each section's time box in the default GPU run (budget 540 s, every earlier section
    using its whole box) holds its CPU-side work, as measured by `python -m
    reproduce.speed.boxes --write` (reproduce/speed/boxes.json), plus its GPU work as
    estimated from FLOPs. (The projection's box once held 216 s of FLOP counting, the
    cuda-tests' box two ResNet-101 WGAN-GP compiles, the packing box 50 iterations x 7 cells
    of ResNet-101 WGAN-GP.)"""
    from reproduce.speed import boxes, gpucheck

    s = boxes.gpu_run_settings()
    doc = boxes.load()
    assert doc["settings"] == {"dim": s.dim, "batch": s.batch, "budget_s": s.budget_s}
    assert set(doc["cpu_side_s"]) == set(gpucheck.SECTIONS)
    rows = boxes.table(s, doc["cpu_side_s"])
    assert [r["section"] for r in rows] == list(gpucheck.SECTIONS)
    assert sum(r["box_s"] for r in rows) == pytest.approx(s.budget_s)
    assert [r for r in rows if not r["fits"]] == []


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


def _left_behind(out: Path) -> list[bytes]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmdline = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if str(out).encode() in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stopped_gpu_check_leaves_no_process_behind(tmp_path, sig):
    """M9 (issue 46): `timeout 60 gpu-check` left its section child running under PID 1 at
    98% CPU (the sections run in their own sessions). A SIGTERM or Ctrl-C now kills every
    process it started, keeps what was measured, and exits 75 (Ctrl-C exited 130)."""
    import signal
    import time

    out = tmp_path / "check"
    env = cli_env(REPRODUCE_FAULTS="gpu-check-hang=cuda-tests")
    proc = popen_cli("gpu-check", "--smoke", "--device", "cpu", "--budget", "600", "--out",
                     str(out), env=env)  # fmt: skip
    deadline = time.monotonic() + 60
    while not any(b"--child" in c for c in _left_behind(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert any(b"--child" in c for c in _left_behind(out)), "the section never started"
    proc.send_signal(getattr(signal, sig))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 75, stdout + stderr
    assert f"stopped by {sig}" in stdout
    time.sleep(0.5)
    assert _left_behind(out) == []
    assert _report(out)["stopped_by"] == sig


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
