"""RELIABILITY.md's promises under faults, with real processes: SIGKILL in the middle of a
checkpoint write, a real full disk, divergence, and SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal

import pytest

from reproduce import checkpoint
from reproduce.results import read_jsonl

from .conftest import cli_env, popen_cli, run_cli
from .procs import (
    assert_same_result,
    finish,
    make_reference,
    n_rows,
    the_run,
    train_args,
    wait_for,
)
from .test_bad_inputs import tmpfs  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return make_reference(tmp_path_factory)


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
