"""FLOP counting and MFU: the counter against a closed form, batch linearity of the scaled
count, and the figures every run records in its status."""

from __future__ import annotations

import torch
from torch import nn

from reproduce.config.run import RunConfig
from reproduce.rundir.rundir import RunDir
from reproduce.training import flops
from reproduce.training.loop import train_run

from .conftest import quiet_runtime, small_config

CPU = torch.device("cpu")


def test_counter_matches_the_closed_form_of_a_convolution():
    conv = nn.Conv2d(3, 8, 5, stride=2, padding=2)
    x = torch.randn(4, 3, 64, 64, requires_grad=True)
    with flops.FlopCounter() as fc:
        y = conv(x)
    # 2 FLOPs per multiply-add: 2 * B * Hout * Wout * k * k * Cin * Cout
    assert fc.total == 2 * 4 * 32 * 32 * 5 * 5 * 3 * 8
    with flops.FlopCounter() as fc:
        y.sum().backward()
    assert fc.total == 2 * (2 * 4 * 32 * 32 * 5 * 5 * 3 * 8)  # grad input + grad weight


def test_n_critic_steps_count_as_one_and_two_extrapolated(small_demo, monkeypatch):
    """M6 (issue 46): the count runs an iteration of one and of two critic steps and
    extrapolates, exactly (FLOPs and ops), so that 1,000 critic steps are not run to count
    them (297 s for ResNet-101, with a SIGTERM waiting)."""
    for arch, procedure, n in (("baseline", "wgan-gp", 5), ("no-norm", "wgan", 7),
                               ("mlp-generator", "lsgan", 3)):  # fmt: skip
        cfg = small_config(small_demo, arch=arch, procedure=procedure, dim=8, n_critic=n)
        fast, full = flops.iteration_cost(cfg), flops.iteration_cost(cfg, exact_critic=True)
        assert fast == full and fast.flops > 0, (arch, procedure)
    counted = []
    real = flops._count
    monkeypatch.setattr(flops, "_count", lambda items: counted.append(dict(items)["n_critic"])
                        or real(items))  # fmt: skip
    many = small_config(small_demo, arch="baseline", procedure="wgan-gp", dim=8,
                        n_critic=1000)  # fmt: skip
    cost = flops.iteration_cost(many)
    assert counted == [1, 2]  # iterations of one and two critic steps run, not of 1,000
    one, two = (flops.iteration_cost(small_config(small_demo, arch="baseline",
                                                  procedure="wgan-gp", dim=8, n_critic=n))
                for n in (1, 2))  # fmt: skip
    assert cost.flops == one.flops + 999 * (two.flops - one.flops)


def test_the_batch_2_count_scales_exactly_to_the_batch(small_demo):
    for arch, procedure in (("baseline", "wgan-gp"), ("gated", "wgan-gp"),
                            ("mlp-generator", "dcgan"), ("no-norm", "wgan")):  # fmt: skip
        cfg = small_config(small_demo, arch=arch, procedure=procedure, dim=8, batch_size=6)
        scaled, exact = flops.iteration_cost(cfg), flops.iteration_cost(cfg, exact_batch=True)
        assert scaled.flops == exact.flops > 0, (arch, procedure)


def test_both_paddings_count_the_same_model_flops(small_demo):
    """The count is the architecture's, whichever padding computes it. TF-SAME computed with
    explicit pads and crops counted 3% less (24.4 vs 25.2 GFLOP for a width-16 baseline
    WGAN-GP iteration: torch's formulas count each op at the shapes it is called with, which
    the pads and crops changed); in the mirrored frame every layer runs at the symmetric
    layer's shapes. It equals a closed-form count of the baseline critic's convolutions."""
    for arch in ("baseline", "gated"):
        costs = {
            pad: flops.iteration_cost(small_config(small_demo, arch=arch, procedure="wgan-gp",
                                                   dim=8, batch_size=2, padding=pad))
            for pad in ("tf-same", "symmetric")
        }  # fmt: skip
        assert costs["tf-same"].flops == costs["symmetric"].flops > 0, arch
    from architectures import get_pair

    critic = get_pair("baseline").critic(8, "layer", "tf-same")
    with flops.FlopCounter() as fc:
        critic(torch.zeros(2, 3, 64, 64))
    convs = [(3, 8, 32), (8, 16, 16), (16, 32, 8), (32, 64, 4)]  # cin, cout, output size
    linear = 2 * 2 * 64 * 4 * 4  # the output layer: 2 FLOPs x batch x 1024 inputs
    assert fc.total == sum(2 * 2 * o * o * 25 * i * c for i, c, o in convs) + linear


def test_wgan_gp_costs_more_than_its_five_critic_steps_without_the_penalty(small_demo):
    gp = flops.iteration_cost(small_config(small_demo, procedure="wgan-gp", dim=8, batch_size=4))
    clip = flops.iteration_cost(small_config(small_demo, procedure="wgan", dim=8, batch_size=4))
    assert gp.flops > clip.flops  # the double backward of the penalty
    assert gp.aten_ops > clip.aten_ops


def test_a_run_records_flops_throughput_and_mfu(small_demo, tmp_path, monkeypatch):
    cfg = small_config(small_demo, iters=2)
    monkeypatch.setenv(flops.ENV_PEAK, "0.5")
    run = RunDir(tmp_path / "run")
    out = train_run(cfg, quiet_runtime(tmp_path, count_flops=True), small_demo, run, CPU)
    assert out.state == "completed"
    st = run.read_status()
    assert st["flops_per_iter"] == flops.iteration_cost(cfg).flops > 0
    assert st["peak_tflops"] == 0.5
    assert st["tflops"] == st["flops_per_iter"] * st["it_per_s"] / 1e12
    assert st["mfu"] == st["tflops"] / 0.5
    assert st["peak_precision"] == "fp32"  # exact mode: no TF32
    assert [flops.mode_precision(m) for m in ("exact", "fast", "fast-bf16")] == [
        "fp32", "tf32", "bf16"]  # fmt: skip
    # the FLOPs are those of the computation, whatever the mode
    fast = RunConfig(**{**cfg.to_dict(), "mode": "fast-bf16"})
    assert flops.iteration_cost(fast) == flops.iteration_cost(cfg)
    monkeypatch.delenv(flops.ENV_PEAK)
    assert flops.peak_tflops(CPU) is None  # a CPU has no listed peak: MFU is not reported


def test_counting_leaves_every_global_generator_as_it_was(small_demo):
    import random

    import numpy as np

    cfg = small_config(small_demo, arch="tanh", procedure="lsgan", dim=8, batch_size=4)
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    flops.iteration_cost(cfg)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
