"""The four procedures: defaults of both hyperparameter sets, the critic schedule, clipping,
frozen critic in the generator step, and a training smoke test of all 28 pairs."""

from __future__ import annotations

import math

import pytest
import torch

from architectures import PAIRS
from reproduce.gan.procedures import PROCEDURES, get_procedure
from reproduce.rundir.rundir import RunDir
from reproduce.training.loop import train_run
from reproduce.training.trainer import Trainer

from .conftest import quiet_runtime, small_config


def test_paper_and_official_code_defaults():
    # SPEC.md B.3: the sets differ only in WGAN-GP Adam beta1
    gp = get_procedure("wgan-gp").defaults
    assert (gp["paper"].lr, gp["paper"].beta1, gp["paper"].beta2) == (1e-4, 0.5, 0.9)
    assert (gp["official-code"].beta1, gp["official-code"].beta2) == (0.0, 0.9)
    assert gp["paper"].n_critic == 5 and gp["paper"].gp_lambda == 10.0
    wgan = get_procedure("wgan").defaults["paper"]
    assert (wgan.optimizer, wgan.lr, wgan.clip, wgan.n_critic) == ("rmsprop-tf", 5e-5, 0.01, 5)
    dcgan = get_procedure("dcgan").defaults["paper"]
    assert (dcgan.optimizer, dcgan.lr, dcgan.beta1, dcgan.beta2, dcgan.n_critic) == (
        "adam-tf",
        2e-4,
        0.5,
        0.999,
        1,
    )
    lsgan = get_procedure("lsgan").defaults["paper"]
    assert (lsgan.optimizer, lsgan.lr, lsgan.n_critic) == ("rmsprop-tf", 1e-4, 1)
    for name in ("dcgan", "lsgan", "wgan"):
        d = PROCEDURES[name].defaults
        assert d["paper"] == d["official-code"]


def test_critic_norm_follows_the_procedure(small_demo):
    assert small_config(small_demo, procedure="wgan-gp").critic_norm == "layer"
    for p in ("dcgan", "lsgan", "wgan"):
        assert small_config(small_demo, procedure=p).critic_norm == "batch"
    assert small_config(small_demo, arch="no-norm", procedure="wgan-gp").critic_norm == "none"


def _instrument(trainer):
    calls = []
    for name, opt in (("G", trainer.opt_g), ("D", trainer.opt_d)):
        original = opt.step

        def step(*a, _name=name, _orig=original, **k):
            d_frozen = all(not p.requires_grad for p in trainer.D.parameters())
            calls.append((_name, d_frozen))
            return _orig(*a, **k)

        opt.step = step
    return calls


@pytest.mark.parametrize("procedure", list(PROCEDURES))
def test_schedule(procedure, small_demo):
    cfg = small_config(small_demo, procedure=procedure)
    trainer = Trainer(cfg, small_demo, torch.device("cpu"))
    calls = _instrument(trainer)
    n = cfg.n_critic
    assert n == (5 if procedure.startswith("wgan") else 1)
    trainer.step()  # iteration 0: no generator step
    assert [c[0] for c in calls] == ["D"] * n
    assert trainer.batches.position.offset == n * cfg.batch_size  # fresh batch per critic step
    calls.clear()
    trainer.step()  # iteration 1: generator first, then n critic steps
    assert [c[0] for c in calls] == ["G"] + ["D"] * n
    assert calls[0][1] is True  # critic frozen during the generator step
    assert not any(frozen for name, frozen in calls[1:])  # and trainable again afterwards
    assert trainer.batches.position.offset == 2 * n * cfg.batch_size


def test_clipping_after_every_critic_step(small_demo):
    cfg = small_config(small_demo, procedure="wgan", lr=0.05, n_critic=3)
    trainer = Trainer(cfg, small_demo, torch.device("cpu"))
    seen = []
    original = trainer.proc.after_critic_step

    def after(critic, hp):
        original(critic, hp)
        seen.append(max(p.abs().max().item() for p in critic.parameters()))

    object.__setattr__(trainer.proc, "after_critic_step", after)
    try:
        trainer.step()
        trainer.step()
    finally:
        object.__delattr__(trainer.proc, "after_critic_step")
    c = torch.tensor(0.01).item()  # the bound as a float32 value
    assert len(seen) == 6 and max(seen) <= c
    assert max(seen) == c  # the large lr pushes weights to the bound


@pytest.mark.parametrize("procedure", list(PROCEDURES))
@pytest.mark.parametrize("arch", list(PAIRS))
def test_every_pair_trains_three_iterations(arch, procedure, small_demo, tmp_path):
    cfg = small_config(small_demo, arch=arch, procedure=procedure)
    rd = RunDir(tmp_path / cfg.run_id)
    out = train_run(cfg, quiet_runtime(tmp_path), small_demo, rd, torch.device("cpu"))
    assert out.state == "completed", out.message
    rows = rd.read_stats()
    assert [r["iter"] for r in rows] == [0, 1, 2]
    assert rows[0]["generator_loss"] is None
    assert all(math.isfinite(r["critic_loss"]) for r in rows)
    assert all(math.isfinite(r["generator_loss"]) for r in rows[1:])
    assert ("gp" in rows[0]) == (procedure == "wgan-gp")
    assert (rd.samples_dir / "iter-0000003.png").exists()
    assert rd.read_status()["state"] == "completed"
