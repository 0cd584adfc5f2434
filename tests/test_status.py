"""`status`: the grid of a matrix, its SLURM queries, a closed pipe, and the live progress
block a running matrix draws."""

from __future__ import annotations

import contextlib
import json
import os
import re

from .conftest import DEMO_FAST, cli_env, run_main


def test_status_shows_the_grid(tmp_path):
    results = tmp_path / "r"
    code, out, err = run_main(
        "matrix",
        *DEMO_FAST,
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
    code, out, err = run_main("matrix", *DEMO_FAST, "--results", str(results), "--dry-run")
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
    from reproduce.fileio import atomic_write_json
    from reproduce.matrix.dispatch import record_submission

    results = tmp_path / "r"
    argv = ["--arch", "tanh", "--procedure", "dcgan", "--executor", "local", "--workers", "1"]
    code, out, err = run_main("matrix", *DEMO_FAST, *argv, "--results", str(results))
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


def test_status_into_a_closed_pipe_exits_cleanly(tmp_path):
    """Issue 24: `status | head` ended in a BrokenPipeError traceback (the reader is gone
    before the output is flushed). Here the pipe is closed before status writes anything."""
    import subprocess
    import sys

    from .conftest import REPO

    results = tmp_path / "r"
    argv = ["matrix", *DEMO_FAST, "--arch", "baseline", "--procedure", "dcgan", "--no-eval",
            "--executor", "debug", "--results", str(results)]  # fmt: skip
    code, _, err = run_main(*argv)
    assert code == 0, err
    proc = subprocess.Popen([sys.executable, "-m", "reproduce", "status", "--results",
                             str(results)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())  # fmt: skip
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and err == "", err


def test_live_progress_redraws_its_block_on_a_terminal(tmp_path):
    """On a terminal the running cells' block is erased (cursor up, erase below) before each
    event line and redrawn under it; elsewhere nothing is drawn between the periodic lines."""
    import io

    from reproduce.matrix.live import LiveProgress
    from reproduce.rundir.rundir import RunDir

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


def test_status_watch_follows_a_running_matrix_until_it_finishes(tmp_path):
    """`status --watch` on a pipe: plain text (no escape codes), a new view only when the grid
    changed, the running cell with its progress and last critic loss, and it ends by itself
    (exit 0) once every cell has finished. On a terminal (a pseudo-terminal here) it redraws
    in place: cursor home and clear before each view."""
    import pty
    import subprocess
    import sys

    from .conftest import REPO, popen_cli
    from .procs import n_rows, wait_for

    results = tmp_path / "r"
    args = ["matrix", *DEMO_FAST, "--arch", "baseline", "--procedure", "wgan-gp", "--iters", "12",
            "--no-eval", "--results", str(results)]  # fmt: skip
    matrix = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="step-sleep=0.4"))
    try:
        wait_for(lambda: n_rows(results) >= 1, matrix)
        watch = [sys.executable, "-m", "reproduce", "status", "--results", str(results), "--watch"]
        plain = subprocess.run([*watch, "0.2"], capture_output=True, text=True, env=cli_env(),
                               cwd=REPO, timeout=600)  # fmt: skip
        assert matrix.wait(timeout=600) == 0
    finally:
        if matrix.poll() is None:
            matrix.kill()
    assert plain.returncode == 0 and plain.stderr == "", plain.stderr
    out = plain.stdout
    assert "\x1b" not in out and out.rstrip().endswith("every cell has finished")
    views = re.split(r"^-- \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\n", out, flags=re.M)[1:]
    assert len(views) >= 2 and len(set(views)) == len(views)  # printed again only on a change
    assert re.search(r"running \d+% [\d.]+it/s ETA \S+ D -?[\d.e+-]+", out), out
    assert "1 completed" in views[-1]
    # on a terminal: redrawn in place (the matrix has finished: one view, then the end)
    master, slave = pty.openpty()
    proc = subprocess.Popen([*watch, "0.2"], stdout=slave, stderr=slave, env=cli_env(), cwd=REPO)
    os.close(slave)
    assert proc.wait(timeout=600) == 0
    seen = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(master, 65536):
            seen += chunk
    os.close(master)
    text = seen.decode()
    assert text.startswith("\x1b[H\x1b[2J") and "every cell has finished" in text, text
    assert run_main("status", "--results", str(results), "--watch", "0")[0] == 2
    # M8 (issue 46): nan and inf were a ValueError, 1e308 an OverflowError, 1e-300 a spin
    for bad in ("nan", "inf", "1e308", "1e-300"):
        code, _, err = run_main("status", "--results", str(results), "--watch", bad)
        assert code == 2 and err.strip().splitlines() == [
            "reproduce status: error: --watch: seconds between redraws, from 0.1 to 86400 "
            f"(a day), got {float(bad):g}"
        ], err
