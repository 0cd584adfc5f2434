"""RELIABILITY.md's promises, proven with real ``python -m reproduce train`` processes:
SIGKILL at random iterations, SIGKILL in the middle of a checkpoint write, a real full disk,
divergence, SIGTERM, and eight processes racing for one run."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from reproduce import checkpoint
from reproduce.results import read_jsonl

from .conftest import (
    assert_states_equal,
    cli_env,
    load_final_state,
    popen_cli,
    run_cli,
    states_equal,
)
from .test_bad_inputs import tmpfs  # noqa: F401  (fixture)

ITERS = 15
KILL_SEED = 20171204  # the random kill points are reproducible


def train_args(
    results: Path, procedure: str, arch: str = "baseline", iters: int = ITERS
) -> list[str]:
    return [
        "train", "--arch", arch, "--procedure", procedure, "--dim", "8", "--batch-size", "8",
        "--iters", str(iters), "--seed", "3", "--threads", "1", "--checkpoint-every-iters", "3",
        "--log-every", "1", "--sample-every", "0", "--no-progress", "--results", str(results),
    ]  # fmt: skip


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


_REFERENCES: dict[tuple[str, str], Path] = {}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, computed once per (arch, procedure)."""

    def get(procedure: str, arch: str = "baseline") -> Path:
        key = (arch, procedure)
        if key not in _REFERENCES:
            results = tmp_path_factory.mktemp(f"ref-{arch}-{procedure}")
            finish(train_args(results, procedure, arch))
            _REFERENCES[key] = the_run(results)
        return _REFERENCES[key]

    return get


def assert_same_result(run: Path, ref: Path) -> None:
    a, b = load_final_state(run), load_final_state(ref)
    assert a["iteration"] == b["iteration"] == ITERS
    for part in ("generator", "critic", "opt_g", "opt_d", "data", "rng", "fixed_noise"):
        assert_states_equal(a[part], b[part], part)
    assert trajectory(run) == trajectory(ref)  # every logged loss of every iteration


@pytest.mark.parametrize("procedure", ["wgan-gp", "wgan", "dcgan", "lsgan"])
def test_sigkill_three_times_then_bit_exact(procedure, tmp_path, reference):
    results = tmp_path / "results"
    args = train_args(results, procedure)
    rng = random.Random(f"{KILL_SEED}-{procedure}")
    kills = sorted(rng.sample(range(4, ITERS - 2), 3))
    for rows in kills:
        sigkill_at(args, results, rows)
    finish(args)
    run = the_run(results)
    log = (run / "log.txt").read_text()
    assert log.count("resumed from ckpt-") == 3, log
    assert_same_result(run, reference(procedure))


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory):
    """One run per procedure SIGKILLed after 8 iterations (checkpoint at 6), shared below."""
    runs: dict[str, Path] = {}

    def get(procedure: str) -> Path:
        if procedure not in runs:
            results = tmp_path_factory.mktemp(f"killed-{procedure}")
            sigkill_at(train_args(results, procedure), results, 8)
            assert checkpoint.load_latest(the_run(results) / "checkpoints") is not None
            runs[procedure] = the_run(results)
        return runs[procedure]

    return get


@pytest.mark.parametrize(
    "procedure,part",
    [("wgan-gp", "rng"), ("wgan", "rng"), ("wgan-gp", "data"), ("wgan-gp", "optimizer")],
)
def test_the_resume_test_can_fail(procedure, part, tmp_path, reference, killed_runs):
    """Disable restoring one part of the state: the same comparison must then fail, while the
    same killed run resumed normally passes it."""
    results = tmp_path / "results"
    shutil.copytree(killed_runs(procedure), results / killed_runs(procedure).name)
    finish(train_args(results, procedure), env=cli_env(REPRODUCE_FAULTS=f"skip-restore={part}"))
    run, ref = the_run(results), reference(procedure)
    assert "resumed from ckpt-" in (run / "log.txt").read_text()
    a, b = load_final_state(run), load_final_state(ref)
    assert not states_equal(a["generator"], b["generator"])
    with pytest.raises(AssertionError):
        assert_same_result(run, ref)


def test_the_killed_run_resumes_exactly_without_faults(tmp_path, reference, killed_runs):
    results = tmp_path / "results"
    shutil.copytree(killed_runs("wgan-gp"), results / killed_runs("wgan-gp").name)
    finish(train_args(results, "wgan-gp"))
    assert_same_result(the_run(results), reference("wgan-gp"))


def test_sigkill_during_checkpoint_write(tmp_path, reference):
    results = tmp_path / "results"
    args = train_args(results, "wgan-gp")
    proc = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="ckpt-stall@9"))
    try:

        def torn_write() -> bool:
            try:
                ckpts = the_run(results) / "checkpoints"
            except AssertionError:
                return False
            return any((p / "state.pt").exists() for p in ckpts.glob(".tmp-ckpt-00000009-*"))

        wait_for(torn_write, proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    run = the_run(results)
    ckpts = run / "checkpoints"
    assert [c.iteration for c in checkpoint.list_checkpoints(ckpts)] == [6, 3]
    loaded = checkpoint.load_latest(ckpts)
    assert loaded is not None and loaded[0].iteration == 6 and not loaded[2]
    finish(args)
    assert not list(ckpts.glob(".tmp-*"))  # the orphan was cleaned up
    assert "removed incomplete checkpoint write" in (run / "log.txt").read_text()
    assert_same_result(run, reference("wgan-gp"))


def test_corrupt_newest_checkpoint_falls_back(tmp_path, reference):
    results = tmp_path / "results"
    args = train_args(results, "wgan-gp")
    sigkill_at(args, results, 11)
    ckpts = checkpoint.list_checkpoints(the_run(results) / "checkpoints")
    newest = ckpts[0].path / "state.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    newest.write_bytes(bytes(data))
    loaded = checkpoint.load_latest(the_run(results) / "checkpoints")
    assert loaded is not None and loaded[0].iteration == ckpts[1].iteration
    finish(args)
    assert "skipped invalid checkpoint" in (the_run(results) / "log.txt").read_text()
    assert_same_result(the_run(results), reference("wgan-gp"))


def test_disk_full_during_checkpoint(tmpfs, reference):  # noqa: F811
    """A real full disk: the old checkpoint survives, the run is marked failed, no retry."""
    fs = tmpfs("24m")
    results = fs / "results"
    args = train_args(results, "wgan-gp")
    proc = popen_cli(*args, env=cli_env(REPRODUCE_FAULTS="step-sleep=0.3"))
    ballast = fs / "ballast"
    try:
        wait_for(lambda: results.exists() and n_rows(results) > 3, proc)
        assert (the_run(results) / "checkpoints" / "ckpt-00000003").exists()
        free = shutil.disk_usage(fs).free
        with ballast.open("wb") as f:  # leave 64 KiB: room for status and log, not a checkpoint
            f.write(b"\0" * max(free - 64 * 1024, 0))
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out + err
    assert "disk full" in out and "Traceback" not in err
    run = the_run(results)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "disk-full"
    assert not list((run / "checkpoints").glob(".tmp-*"))  # partial write removed
    loaded = checkpoint.load_latest(run / "checkpoints")
    assert loaded is not None and loaded[0].iteration >= 3 and not loaded[2]
    ballast.unlink()
    finish(args)  # after freeing space the same command resumes and finishes exactly
    assert_same_result(run, reference("wgan-gp"))


def test_nan_at_step_k_is_diverged_at_k(tmp_path):
    results = tmp_path / "results"
    args = train_args(results, "wgan-gp")
    args[args.index("--log-every") + 1] = "4"
    args[args.index("--checkpoint-every-iters") + 1] = "5"
    r = run_cli(*args, env=cli_env(REPRODUCE_FAULTS="nan@7"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("diverged:") and "iteration 7" in r.stdout
    run = the_run(results)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "diverged" and status["diverged_at"] == 7
    ckpts = checkpoint.list_checkpoints(run / "checkpoints")
    assert [c.iteration for c in ckpts] == [5]  # the last good checkpoint, nothing after it
    state = checkpoint.load_latest(run / "checkpoints")[1]
    assert all(t.isfinite().all() for t in state["generator"].values())
    assert all(t.isfinite().all() for t in state["critic"].values())
    rows = read_jsonl(run / "stats.jsonl")
    assert [r["iter"] for r in rows] == list(range(8))
    assert rows[6]["critic_loss"] == rows[6]["critic_loss"]  # finite before k
    assert rows[7]["critic_loss"] != rows[7]["critic_loss"]  # NaN at k
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and "lease" not in p.name}
    again = run_cli(*args)  # never retried
    assert again.returncode == 0 and again.stdout.startswith("already-diverged")
    assert {p: p.read_bytes() for p in before} == before


def test_sigterm_checkpoints_at_the_next_step_and_resumes(tmp_path, reference):
    results = tmp_path / "results"
    args = train_args(results, "wgan-gp")
    args[args.index("--checkpoint-every-iters") + 1] = "0"  # only the signal checkpoint
    proc = popen_cli(*args)
    wait_for(lambda: n_rows(results) >= 5, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, out + err
    run = the_run(results)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and "SIGTERM" in status["message"]
    (ckpt,) = checkpoint.list_checkpoints(run / "checkpoints")
    assert ckpt.iteration == status["iteration"] >= 5
    finish(args)
    assert_same_result(run, reference("wgan-gp"))


def test_same_seed_in_two_processes_gives_identical_tensors(tmp_path, reference):
    ref = reference("wgan-gp")
    results = tmp_path / "again"
    finish(train_args(results, "wgan-gp"))
    assert_same_result(the_run(results), ref)
    other = tmp_path / "seed4"
    args = train_args(other, "wgan-gp")
    args[args.index("--seed") + 1] = "4"
    finish(args)
    assert not states_equal(load_final_state(the_run(other))["generator"],
                            load_final_state(ref)["generator"])  # fmt: skip


def test_eight_processes_train_one_run_exactly_once(tmp_path):
    results = tmp_path / "results"
    args = train_args(results, "dcgan", iters=12)
    env = cli_env(REPRODUCE_FAULTS="step-sleep=0.2")
    procs = [popen_cli(*args, env=env) for _ in range(8)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    trained = [o for o, _ in outs if o.startswith("completed:")]
    assert len(trained) == 1, outs
    for code, (out, err) in zip(codes, outs, strict=True):
        assert (code, out.split(":")[0]) in {
            (0, "completed"),
            (75, "busy"),
            (0, "already-completed"),
        }, (out, err)
    run = the_run(results)
    log = (run / "log.txt").read_text()
    assert log.count("started ") == 1 and "resumed" not in log
    assert [r["iter"] for r in read_jsonl(run / "stats.jsonl")] == list(range(12))
