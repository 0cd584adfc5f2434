"""Matrices that train, without SLURM: idempotence, concurrent controllers, the local executor's
GPU slots, interruption and resumption, and the signals a matrix receives."""

from __future__ import annotations

import json
import os
import re
import signal

from reproduce.fileio import read_jsonl
from reproduce.matrix.cells import cell_state

from .conftest import DEMO_FAST, cli_env, popen_cli, run_cli, run_main
from .procs import n_rows, wait_for


def test_second_invocation_trains_nothing(tmp_path):
    args = [
        "matrix",
        *DEMO_FAST,
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
    assert out.splitlines()[0] == "4 cells: 4 to run"
    # the printed summary fits 100 columns: one line per cell (the files hold every column;
    # only the line naming their path may be longer)
    paths = ("written to /", "--results /", "--logdir /")
    assert max(len(x) for x in out.splitlines() if not any(p in x for p in paths)) <= 100, out
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
    # the footer gives the data's own score as measured (all four cells share the reference)
    assert rows["real_is"].between(7.0, 8.0).all() and rows["real_is"].nunique() == 1
    own = f"(its IS is out of 8; the data's own: {rows['real_is'][0]:.2f})"
    assert out.splitlines()[head + 5] == f"IS and FD: the demo judge's {own}", out
    # then what the verdicts mean (3 iterations: a smoke run; where trained cells are), the
    # files, and the next commands
    tail = " ".join(out.splitlines()[head + 6 : -3])
    trained = int(rows["verdict"].eq("trained").sum())
    assert tail == (
        f"{trained} of 4 judged cells trained, at 3 generator iterations: a smoke run of the "
        "pipeline (3 iterations train nothing); trained cells on a CPU: docs/proof-of-life.md "
        "(python -m reproduce figures showcase)"
    ), out
    assert out.splitlines()[-2].startswith("next: python -m reproduce report --results ")
    assert out.splitlines()[-1].split()[:2] == ["tensorboard", "--logdir"]
    assert rows["modes"].str.fullmatch(r"[0-8]/8").all()
    assert rows["verdict"].isin(["trained", "low-quality", "collapsed"]).all()
    assert len(list((tmp_path / "r" / "matrices").glob("*-summary.csv"))) == 1
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "r").rglob("ckpt-*/state.pt")}
    code, out, err = run_main(*args)
    assert code == 0 and out.splitlines()[0] == "4 cells: 0 to run, 4 already done"
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing retrained
    code, out, _ = run_main(*args, "--dry-run")
    assert out.count(" completed") == 4


def test_eight_matrix_processes_train_each_cell_exactly_once(tmp_path):
    results = tmp_path / "r"
    args = [
        "matrix",
        *DEMO_FAST,
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
    # 0: every cell done when it ended; 75: some were still being trained by another
    # process (L8 of issue 46: that exited 1, as if a cell had failed)
    assert all(p.returncode in (0, 75) for p in procs), outs
    for p, (o, _) in zip(procs, outs, strict=True):
        assert p.returncode == 0 or "busy" in o, o  # (a busy cell may finish before the end)
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
        *DEMO_FAST,
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


def test_interrupted_local_matrix_resumes(tmp_path):
    results = tmp_path / "r"
    args = [
        "matrix",
        *DEMO_FAST,
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
    # the cell holds before iteration 4 (its rows 0-3 written) until the stop: however slow
    # the machine, the stop lands at the end of iteration 4
    proc = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="hold@4"))
    wait_for(lambda: n_rows(results) >= 4, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["iteration"] == 5, status
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
    paths = ("written to /", "--results /", "--logdir /")  # lines that name the results path
    assert max(len(x) for x in r.stdout.splitlines() if not any(p in x for p in paths)) <= 100


def test_a_cell_that_completes_while_the_matrix_stops_is_announced(tmp_path):
    """A cell in its final evaluation when Ctrl-C comes completes instead of checkpointing;
    the matrix used to exit without a word about it."""
    results = tmp_path / "r"
    args = ["matrix", *DEMO_FAST, "--arch", "baseline", "--procedure", "wgan", "--results",
            str(results)]  # fmt: skip
    proc = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="eval-sleep=4"))
    wait_for(lambda: any(results.glob("*/checkpoints/ckpt-*")), proc)  # saved before evaluating
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    assert cell_state(run).state == "completed"
    assert f"  [1/1] completed: {run.name}" in out.splitlines(), out


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
    args = [sys.executable, "-m", "reproduce", "matrix", *DEMO_FAST, "--arch", "baseline",
            "--procedure", "wgan-gp", "dcgan", "--iters", "30", "--workers", "1", "--no-eval",
            "--results", str(results)]  # fmt: skip
    env = cli_env(REPRODUCE_FAULTS="submit-sleep=2,step-sleep=0.2")
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=env)  # fmt: skip
    try:
        wait_for(lambda: any(results.glob("*/submission.json")), proc)  # mid-submission
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


def test_sigint_to_a_matrix_that_inherited_it_ignored_still_stops_it(tmp_path):
    """Issue 24: a matrix started in the background by a script inherits SIGINT as ignored;
    a SIGINT sent to it was ignored and the matrix ran on. Now it stops the cells (they
    checkpoint) and exits 75, as Ctrl-C does."""
    import subprocess
    import sys

    from .conftest import REPO

    results = tmp_path / "results"
    args = [sys.executable, "-m", "reproduce", "matrix", *DEMO_FAST, "--arch", "baseline",
            "--procedure", "wgan-gp", "--iters", "40", "--no-eval", "--checkpoint-every", "0",
            "--results", str(results)]  # fmt: skip
    env = cli_env(REPRODUCE_FAULTS="hold@4")  # the cell waits before iteration 4 for the stop

    def ignore_sigint() -> None:  # what a non-interactive shell does for `matrix ... &`
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=ignore_sigint)  # fmt: skip
    try:
        wait_for(lambda: n_rows(results) >= 4, proc)
        proc.send_signal(signal.SIGINT)  # to the controller only, as `kill -INT PID` does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 75, out + err
    (run,) = [d for d in results.iterdir() if (d / "config.json").exists()]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["iteration"] == 5, status
