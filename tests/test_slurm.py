"""The matrix on a real SLURM cluster (../shared/slurm-ci: one node, partitions `debug`
(preemptible) and `high`). Skipped only when no controller answers; in CI that is a failure."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from architectures import PAIRS
from reproduce.fileio import read_jsonl
from reproduce.gan.procedures import PROCEDURES

from .conftest import FINAL_EVAL, assert_states_equal, cli_env, load_final_state, run_cli

pytestmark = pytest.mark.slurm

DEMO = ["--profile", "demo", "--executor", "slurm", "--slurm-profile", "ci", "--no-progress"]
# the job-array test is about dispatch, not scores: without the demo judge's evaluations its
# 28 cells finish in about half the time (640 s of a 900 s limit under load with them)
NO_EVAL = ["--no-eval"]


@pytest.fixture(scope="module")
def slurm() -> None:
    try:
        r = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
        up = r.returncode == 0 and "UP" in r.stdout
        reason = r.stdout.strip() or r.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        up, reason = False, str(e)
    if not up:
        if os.environ.get("CI"):
            pytest.fail(f"no SLURM controller reachable in CI: {reason}")
        pytest.skip(
            f"no SLURM controller reachable ({reason}); start ../shared/slurm-ci/start_slurm.sh"
        )


def squeue_ids() -> set[str]:
    r = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True
    )
    return set(r.stdout.split())


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} (queue: {squeue_ids()})")
        time.sleep(0.5)


def only_run(results: Path) -> Path:
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    return run


def state_of(run: Path) -> str | None:
    try:
        return json.loads((run / "status.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def test_demo_matrix_is_one_job_array_and_resubmitting_queues_nothing(slurm, tmp_path):
    results = tmp_path / "r"
    r = run_cli("matrix", *DEMO, *NO_EVAL, "--iters", "2", "--results", str(results), "--wait",
                timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(PAIRS) * len(PROCEDURES)  # the paper's 28 cells
    assert f"submitted {n} cells as SLURM job array" in r.stdout
    subs = [json.loads(p.read_text()) for p in results.glob("*/submission.json")]
    assert len(subs) == n
    arrays = {s["job_id"].split("_")[0] for s in subs}
    assert len(arrays) == 1  # one array
    assert sorted(int(s["job_id"].split("_")[1]) for s in subs) == list(range(n))
    states = [json.loads(p.read_text())["state"] for p in results.glob("*/status.json")]
    assert len(states) == n and set(states) <= {"completed", "diverged"}, states
    before = squeue_ids()
    again = run_cli("matrix", *DEMO, *NO_EVAL, "--iters", "2", "--results", str(results))
    assert again.returncode == 0, again.stderr
    assert (
        f"{n} cells: 0 to run, {n} already done" in again.stdout
        and "nothing to submit" in again.stdout
    )
    assert squeue_ids() <= before  # nothing new queued
    status = run_cli("status", "--results", str(results))
    assert "seed 0: " in status.stdout and "pending" not in status.stdout


@pytest.fixture(scope="module")
def slurm_reference(tmp_path_factory) -> Path:
    """The preemption/requeue cell trained without interruption, with the job's thread count."""
    results = tmp_path_factory.mktemp("slurm-ref")
    r = run_cli(
        "train",
        "--arch",
        "baseline",
        "--procedure",
        "wgan-gp",
        "--dim",
        "8",
        "--batch-size",
        "16",
        "--iters",
        "24",
        "--threads",
        "1",
        "--no-progress",
        "--results",
        str(results),
        *FINAL_EVAL,
    )
    assert r.returncode == 0, r.stderr
    return only_run(results)


def submit_slow_cell(results: Path, *extra: str) -> Path:
    r = run_cli(
        "matrix",
        *DEMO,
        "--arch",
        "baseline",
        "--procedure",
        "wgan-gp",
        "--iters",
        "24",
        "--results",
        str(results),
        *FINAL_EVAL,
        *extra,
        env=cli_env(REPRODUCE_FAULTS="step-sleep=0.4"),
    )
    assert r.returncode == 0 and "submitted 1 cells" in r.stdout, r.stdout + r.stderr
    return only_run(results)


def rows(run: Path) -> int:
    return len(read_jsonl(run / "stats.jsonl"))


def test_preemption_by_a_higher_priority_partition_requeues_and_resumes_exactly(
    slurm, tmp_path, slurm_reference
):
    run = submit_slow_cell(tmp_path / "r", "--checkpoint-every", "0")
    wait_until(lambda: state_of(run) == "running" and rows(run) >= 5, 180, "cell never ran")
    # a job in `high` that needs the whole node (2 CPUs) preempts the cell: USR2, requeue
    # the high-priority job takes every CPU of the node, so the cell must make room
    cpus = subprocess.run(["sinfo", "-h", "-p", "high", "-o", "%c"], capture_output=True,
                          text=True, check=True).stdout.split()[0]  # fmt: skip
    hog = subprocess.run(
        ["sbatch", "--parsable", "-p", "high", "-c", cpus, "-o", "/dev/null", "--wrap", "sleep 8"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert hog.stdout.strip()
    wait_until(lambda: state_of(run) == "completed", 400, "preempted cell did not complete")
    log = (run / "log.txt").read_text()
    assert "interrupted by SIGUSR2" in log, log
    assert "resumed from ckpt-" in log, log
    sub = json.loads((run / "submission.json").read_text())
    out = Path(sub["folder"]) / f"{sub['job_id']}_0_log.err"
    assert "this job is preempted" in out.read_text()  # submitit's handler took over
    a, b = load_final_state(run), load_final_state(slurm_reference)
    for part in ("generator", "critic", "opt_g", "opt_d", "data", "rng"):
        assert_states_equal(a[part], b[part], part)


def test_plain_scontrol_requeue_completes_from_the_last_checkpoint(
    slurm, tmp_path, slurm_reference
):
    run = submit_slow_cell(tmp_path / "r", "--checkpoint-every-iters", "3")
    wait_until(lambda: state_of(run) == "running" and rows(run) >= 7, 180, "cell never ran")
    job = json.loads((run / "submission.json").read_text())["job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True)
    wait_until(lambda: state_of(run) == "completed", 400, "requeued cell did not complete")
    log = (run / "log.txt").read_text()
    assert "resumed from ckpt-" in log, log
    a, b = load_final_state(run), load_final_state(slurm_reference)
    for part in ("generator", "critic", "opt_g", "opt_d", "data", "rng"):
        assert_states_equal(a[part], b[part], part)
