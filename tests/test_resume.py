"""Bit-exact resume after SIGKILL, proven with real ``python -m reproduce train`` processes
(RELIABILITY.md), including proof that the test fails when part of the state is not restored."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from reproduce import checkpoint

from .conftest import assert_states_equal, cli_env, load_final_state, states_equal
from .procs import (
    ITERS,
    KILL_SEED,
    assert_same_result,
    finish,
    sigkill_at,
    the_run,
    train_args,
)


@pytest.mark.parametrize("procedure", ["wgan-gp", "wgan", "dcgan", "lsgan", "wgan-gp+adam-torch"])
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


@pytest.mark.parametrize("how", ["same-command", "resume"])
def test_a_run_written_before_the_adam_rename_resumes_exactly(
    how, tmp_path, reference, killed_runs
):
    """PyTorch's Adam was spelled "adam" in config.json until TF1's Adam became the default;
    such a run (same maths, same run id) resumes under today's name, bit-exactly, through the
    original command and through --resume."""
    procedure = "wgan-gp+adam-torch"
    killed = killed_runs(procedure)
    results = tmp_path / "results"
    run = results / killed.name
    shutil.copytree(killed, run)
    doc = json.loads((run / "config.json").read_text())
    assert doc["config"]["optimizer"] == "adam-torch"
    doc["config"]["optimizer"] = "adam"  # as the code before the rename wrote it
    (run / "config.json").write_text(json.dumps(doc))
    args = train_args(results, procedure)
    finish(args if how == "same-command" else ["train", "--resume", str(run), "--no-progress"])
    assert "resumed from ckpt-" in (run / "log.txt").read_text()
    assert_same_result(run, reference(procedure))


def test_the_killed_run_resumes_exactly_without_faults(tmp_path, reference, killed_runs):
    results = tmp_path / "results"
    shutil.copytree(killed_runs("wgan-gp"), results / killed_runs("wgan-gp").name)
    finish(train_args(results, "wgan-gp"))
    assert_same_result(the_run(results), reference("wgan-gp"))


def test_same_seed_in_two_processes_gives_identical_tensors(tmp_path, reference):
    ref = reference("wgan-gp")
    results = tmp_path / "again"
    finish(train_args(results, "wgan-gp"))
    assert_same_result(the_run(results), ref)


def scores(run: Path) -> list[dict]:
    """The evaluation rows without wall times: every score of every evaluation."""
    from reproduce.results import metrics_rows

    return [
        {k: v for k, v in r.items() if k not in ("seconds", "train_seconds")}
        for r in metrics_rows(run)
    ]


def test_sigkill_with_evaluation_on_gives_the_same_state_and_scores(tmp_path, reference):
    """The other resume tests train with evaluation off (for speed); this one keeps the demo
    judge's periodic and final evaluations on: killed twice, the run ends with the same
    training state and the same evaluation rows (each evaluated once) as an uninterrupted
    run, so evaluation neither perturbs training nor is repeated or lost on resume."""
    results = tmp_path / "results"
    args = train_args(results, "wgan-gp", evaluate=True)
    for rows in (6, 11):
        sigkill_at(args, results, rows)
    finish(args)
    run, ref = the_run(results), reference("wgan-gp", evaluate=True)
    assert (run / "log.txt").read_text().count("resumed from ckpt-") == 2
    assert_same_result(run, ref)
    got = scores(run)
    assert [(r["iter"], r["kind"]) for r in got] == [
        (4, "periodic"), (8, "periodic"), (12, "periodic"), (15, "final")
    ]  # fmt: skip
    assert got == scores(ref)
    # and evaluation does not change training: the same run without it trains identically
    plain = reference("wgan-gp")
    assert_states_equal(load_final_state(run)["generator"], load_final_state(plain)["generator"])
