"""Bit-exact resume after SIGKILL, proven with real ``python -m reproduce train`` processes
(RELIABILITY.md), including proof that the test fails when part of the state is not restored."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from reproduce.rundir import checkpoint
from reproduce.training.bookkeeping import Outcome

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
    from reproduce.rundir.rundir import metrics_rows

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


@pytest.mark.parametrize("procedure", ["wgan-gp", "wgan"])  # TF1 Adam and TF1 RMSProp
def test_a_resume_on_another_device_restores_every_tensor_where_its_consumer_lives(
    procedure, tmp_path, small_demo
):
    """The restore path on a device other than the CPU, shown on the CPU: the meta device
    stands in for CUDA (a tensor there is not a CPU tensor, as on a GPU). Checkpoints are read
    to the CPU and each tensor moved by its consumer: the networks' and optimisers' states to
    the run's device, the RNG states kept as CPU ByteTensors. Loading them to the run's
    device skipped every checkpoint on CUDA ("RNG state must be a torch.ByteTensor")."""
    import torch

    from reproduce.rundir.rundir import RunDir
    from reproduce.training import loop as train

    from .conftest import quiet_runtime, small_config

    cfg = small_config(small_demo, procedure=procedure, iters=3)
    rt = quiet_runtime(tmp_path, checkpoint_every_iters=2)
    rd = RunDir(tmp_path / cfg.run_id)
    assert train.train_run(cfg, rt, small_demo, rd, torch.device("cpu")).state == "completed"
    latest = checkpoint.load_latest(rd.checkpoints_dir)
    assert latest is not None
    saved = latest[1]
    torch.manual_seed(12345)  # something else, so that the restore has to set it
    meta = torch.device("meta")
    found = train._restore(cfg, rt, small_demo, rd, meta)
    assert not isinstance(found, Outcome)
    assert found.skipped == [] and found.checkpoint is not None, found.skipped
    t = found.trainer
    assert t.iteration == 3
    for net in (t.G, t.D):
        assert {p.device for p in net.parameters()} == {meta}
    for opt in (t.opt_g, t.opt_d):
        moments = [v for s in opt.state.values() for k, v in s.items() if k != "step"]
        assert moments and {v.device for v in moments if torch.is_tensor(v)} == {meta}
    assert t.fixed_noise.device == meta
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch_cpu"])


def test_cuda_generator_states_go_to_devices_that_exist():
    """A CUDA run saves its own device's generator and restores it onto the run's device
    whatever is visible at the resume; a checkpoint of every device's states (older ones)
    restores by index only onto devices that exist. Restoring all of them by index raised
    IndexError when a run saved seeing two GPUs resumed seeing one, and the checkpoint was
    skipped."""
    import torch

    from reproduce.rng import cuda_restores

    s0, s1 = torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    own = {"torch_cuda": [s1], "torch_cuda_scope": "run"}
    assert cuda_restores(own, cuda0, visible=1) == [(s1, 0)]  # saved on cuda:1, now cuda:0
    assert cuda_restores(own, torch.device("cuda"), visible=1) == [(s1, 0)]
    assert cuda_restores(own, cuda1, visible=1) == []
    assert cuda_restores(own, torch.device("cpu"), visible=2) == []
    every = {"torch_cuda": [s0, s1]}  # written before the scope was recorded
    assert cuda_restores(every, cuda0, visible=1) == [(s0, 0)]
    assert cuda_restores(every, cuda1, visible=2) == [(s1, 1)]
    assert cuda_restores(every, cuda1, visible=1) == []
    assert cuda_restores({**every, "torch_cuda_scope": "all"}, None, visible=1) == [(s0, 0)]
    assert cuda_restores(every, None, visible=4) == [(s0, 0), (s1, 1)]
    assert cuda_restores({"torch_cuda": []}, cuda0, visible=1) == []
    assert cuda_restores(every, cuda0, visible=0) == []
