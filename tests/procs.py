"""Helpers for tests that drive real ``python -m reproduce train`` processes."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from reproduce.fileio import read_jsonl

from .conftest import assert_states_equal, load_final_state, popen_cli, run_cli

ITERS = 15
KILL_SEED = 20171204  # the random kill points are reproducible


def train_args(
    results: Path,
    procedure: str,
    arch: str = "baseline",
    iters: int = ITERS,
    evaluate: bool = False,
) -> list[str]:
    """A short real training run. Evaluation is off unless asked for: these runs test
    training state, and the demo judge's periodic evaluations would triple their time
    (``test_resume`` has its own test of resuming with evaluation on)."""
    judged = ["--eval", "--eval-every", "4", "--eval-samples", "64", "--final-eval-samples", "128"]
    # "wgan-gp+adam-torch": the procedure with another optimiser
    procedure, _, optimizer = procedure.partition("+")
    return [
        "train",
        "--arch",
        arch,
        "--procedure",
        procedure,
        *(["--optimizer", optimizer] if optimizer else []),
        "--dim",
        "8",
        "--batch-size",
        "8",
        "--iters",
        str(iters),
        "--seed",
        "3",
        "--threads",
        "1",
        "--checkpoint-every-iters",
        "3",
        "--log-every",
        "1",
        "--sample-every",
        "0",
        "--no-progress",
        "--no-count-flops",
        "--results",
        str(results),
        *(judged if evaluate else ["--no-eval"]),
    ]


def the_run(results: Path) -> Path:
    runs = (
        [p for p in results.iterdir() if (p / "config.json").exists()] if results.exists() else []
    )
    assert len(runs) == 1, runs
    return runs[0]


def wait_for(pred, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended early ({proc.returncode}): {out}\n{err}")
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


def wait_stopped(proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Wait until ``proc`` has stopped itself (``REPRODUCE_FAULTS=pause@K``: SIGSTOP)."""

    def stopped() -> bool:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "T"

    wait_for(stopped, proc, timeout)


def n_rows(results: Path) -> int:
    try:
        return len(read_jsonl(the_run(results) / "stats.jsonl"))
    except (AssertionError, FileNotFoundError):
        return 0


def sigkill_at(args: list[str], results: Path, rows: int, env=None) -> None:
    """Start the command and SIGKILL it once ``rows`` iterations have been logged."""
    proc = popen_cli(*args[0:], env=env)
    try:
        wait_for(lambda: n_rows(results) >= rows, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def finish(args: list[str], env=None) -> subprocess.CompletedProcess:
    r = run_cli(*args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def trajectory(run: Path) -> list[dict]:
    """Per-iteration statistics without the wall times."""
    return [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(run / "stats.jsonl")]


def make_reference(tmp_path_factory: pytest.TempPathFactory):
    """Uninterrupted runs, computed once per (arch, procedure) for the calling module."""
    cache: dict[tuple[str, str, bool], Path] = {}

    def get(procedure: str, arch: str = "baseline", evaluate: bool = False) -> Path:
        key = (arch, procedure, evaluate)
        if key not in cache:
            results = tmp_path_factory.mktemp(f"ref-{arch}-{procedure}")
            finish(train_args(results, procedure, arch, evaluate=evaluate))
            cache[key] = the_run(results)
        return cache[key]

    return get


def assert_same_result(run: Path, ref: Path) -> None:
    a, b = load_final_state(run), load_final_state(ref)
    assert a["iteration"] == b["iteration"] == ITERS
    for part in ("generator", "critic", "opt_g", "opt_d", "data", "rng", "fixed_noise"):
        assert_states_equal(a[part], b[part], part)
    assert trajectory(run) == trajectory(ref)  # every logged loss of every iteration
