"""The speed-ups change no number (exact mode), or change them within a stated tolerance
(fast modes):

* the multi-tensor (foreach) optimisers are bit-identical to per-parameter reference loops;
* the training loop computes the same bits as a plain eager port of the same cell
  (tests/reference.py) for all four procedures;
* CUDA graphs are bit-identical to eager execution (needs CUDA; skipped without it);
* --mode fast agrees with exact mode within the tolerance stated below, --mode fast-bf16
  within its own; the mode is part of the run id and recorded in the run's files.
"""

from __future__ import annotations

import json

import pytest
import torch

from reproduce.config.run import RunConfig
from reproduce.gan.optim import TFAdam, TFRMSprop
from reproduce.gan.penalties import gradient_penalty, gradient_penalty_func
from reproduce.gan.procedures import PROCEDURES
from reproduce.training.trainer import Trainer, configure_numerics

from .conftest import load_final_state, run_cli, small_config
from .reference import LoopTFAdam, ReferenceCell

SHAPES = [(16, 3, 5, 5), (16,), (32, 16, 5, 5), (1, 512), (7,)]
CUDA = torch.cuda.is_available()


def _train(make_opt, steps: int = 200) -> list[torch.Tensor]:
    """Parameters after ``steps`` updates with gradients spanning eight orders of magnitude."""
    torch.manual_seed(1)
    params = [torch.randn(s, requires_grad=True) for s in SHAPES]
    opt = make_opt(params)
    g = torch.Generator().manual_seed(2)
    for _ in range(steps):
        for p in params:
            scale = 10.0 ** torch.randint(-6, 2, (1,), generator=g).item()
            p.grad = torch.randn(p.shape, generator=g) * scale
        opt.step()
    return [p.detach() for p in params]


class LoopTFRMSprop(torch.optim.Optimizer):
    """TF1's ApplyRMSProp kernel transcribed one parameter at a time (the reference that
    reproduce.gan.optim.TFRMSprop implements with foreach kernels)."""

    def __init__(self, params, lr: float, decay: float = 0.9, eps: float = 1e-10) -> None:
        super().__init__(params, {"lr": lr, "decay": decay, "eps": eps})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            one_minus_decay = float(torch.tensor(1.0) - group["decay"])
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st["ms"] = torch.ones_like(p)
                ms = st["ms"]
                ms.add_((p.grad * p.grad - ms) * one_minus_decay)
                p.sub_(p.grad * group["lr"] / (ms + group["eps"]).sqrt())


def _bitwise(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_foreach_optimisers_are_bit_identical_to_per_parameter_loops():
    for betas in ((0.5, 0.9), (0.5, 0.999), (0.0, 0.9)):
        loop = _train(lambda ps, b=betas: torch.optim.Adam(ps, 1e-4, betas=b, foreach=False))
        multi = _train(lambda ps, b=betas: torch.optim.Adam(ps, 1e-4, betas=b, foreach=True))
        assert _bitwise(loop, multi), betas
    assert _bitwise(
        _train(lambda ps: LoopTFRMSprop(ps, 5e-5)), _train(lambda ps: TFRMSprop(ps, 5e-5))
    )
    for betas in ((0.5, 0.9), (0.5, 0.999), (0.0, 0.9)):
        loop = _train(lambda ps, b=betas: LoopTFAdam(ps, 1e-4, betas=b))
        assert _bitwise(loop, _train(lambda ps, b=betas: TFAdam(ps, 1e-4, betas=b))), betas
    assert _bitwise(
        _train(lambda ps: torch.optim.RMSprop(ps, 1e-4, foreach=False)),
        _train(lambda ps: torch.optim.RMSprop(ps, 1e-4, foreach=True)),
    )
    # the fused Adam of the fast modes is not: it is kept out of exact mode for this reason
    fused = _train(lambda ps: torch.optim.Adam(ps, 1e-4, betas=(0.5, 0.9), fused=True))
    loop = _train(lambda ps: torch.optim.Adam(ps, 1e-4, betas=(0.5, 0.9), foreach=False))
    assert not _bitwise(loop, fused)


def test_exact_mode_optimisers_are_the_foreach_ones(small_demo):
    cpu = torch.device("cpu")
    t = Trainer(small_config(small_demo, procedure="wgan-gp"), small_demo, cpu)
    assert isinstance(t.opt_d, TFAdam)  # the default Adam (SPEC.md B.4)
    cfg = small_config(small_demo, procedure="wgan-gp", optimizer="adam-torch")
    t = Trainer(cfg, small_demo, cpu)
    assert t.opt_d.defaults["foreach"] is True and not t.opt_d.defaults["fused"]
    t = Trainer(small_config(small_demo, procedure="wgan"), small_demo, cpu)
    assert isinstance(t.opt_d, TFRMSprop)


# the Adam procedures run TF1's Adam by default: ten iterations against the port's
# per-parameter transcription of its kernel; and five with PyTorch's Adam (adam-torch)
PORT_CASES = [(p, {"iters": 10} if p in ("dcgan", "wgan-gp") else {}) for p in PROCEDURES] + [
    (p, {"optimizer": "adam-torch"}) for p in ("dcgan", "wgan-gp")
]


@pytest.mark.parametrize(
    "procedure,extra",
    PORT_CASES,
    ids=[p + ("-adam-torch" if "optimizer" in e else "") for p, e in PORT_CASES],
)
def test_training_loop_matches_a_plain_eager_port_bit_for_bit(procedure, extra, small_demo):
    """Five iterations of the package's loop (foreach optimisers, frozen critic, device-side
    statistics) against tests/reference.py: every parameter and every loss bit-identical
    (ten with TF1's Adam, the default of dcgan and wgan-gp)."""
    cfg = small_config(small_demo, procedure=procedure, **{"iters": 5, **extra})
    cpu = torch.device("cpu")
    configure_numerics(cpu)
    trainer = Trainer(cfg, small_demo, cpu, data_placement="device")
    rows = [trainer.step() for _ in range(cfg.iters)]
    ref = ReferenceCell(cfg, small_demo, cpu)
    for _ in range(cfg.iters):
        ref.step()
    for net, ref_net in ((trainer.G, ref.G), (trainer.D, ref.D)):
        for (name, p), q in zip(net.named_parameters(), ref_net.parameters(), strict=True):
            assert torch.equal(p, q), name
    for row, ref_row in zip(rows, ref.log, strict=True):
        assert row["critic_loss"].item() == ref_row["critic_loss"]
        if "generator_loss" in ref_row:
            assert row["generator_loss"].item() == ref_row["generator_loss"]


def test_both_penalty_forms_agree(small_demo):
    """The torch.func form of the penalty (compiled in the fast modes), evaluated eagerly,
    equals the autograd.grad form, and so do its gradients with respect to the weights."""
    from architectures import get_pair

    torch.manual_seed(0)
    D = get_pair("resnet101").critic(8, "layer", "tf-same")
    real, fake = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    alpha = torch.rand(4, 1, 1, 1)
    a, slopes_a = gradient_penalty(D, real, fake, alpha)
    b, slopes_b = gradient_penalty_func(D, real, fake, alpha)
    torch.testing.assert_close(b, a, rtol=1e-6, atol=0)
    torch.testing.assert_close(slopes_b, slopes_a, rtol=1e-6, atol=0)
    # (the output bias does not enter an input gradient: its gradient is zero in both)
    ga = torch.autograd.grad(a, list(D.parameters()), materialize_grads=True)
    gb = torch.autograd.grad(b, list(D.parameters()), materialize_grads=True)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-9)


def _rel(new: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference's largest magnitude."""
    return float((new - ref).abs().max() / ref.abs().max().clamp_min(1e-6))


def _one_step_grads(trainer: Trainer, seed: int) -> tuple[dict, list, list]:
    """Loss, statistics and weight gradients of one critic step and one generator step on
    fixed inputs, without updating anything."""
    g = torch.Generator().manual_seed(seed)
    B = trainer.cfg.batch_size
    real = torch.rand(B, 3, 64, 64, generator=g) * 2 - 1
    z, z2 = torch.randn(B, 128, generator=g), torch.randn(B, 128, generator=g)
    alpha = torch.rand(B, 1, 1, 1, generator=g)
    s = trainer.steps
    loss, stats = s.critic_forward(real, z, alpha)
    d_grads = torch.autograd.grad(loss, list(trainer.D.parameters()))
    trainer.D.requires_grad_(False)
    g_loss, g_stats = s.generator_forward(z2)
    g_grads = torch.autograd.grad(g_loss, list(trainer.G.parameters()))
    trainer.D.requires_grad_(True)
    return {**stats, **g_stats}, list(d_grads), list(g_grads)


def test_fast_modes_agree_with_exact_mode(small_demo):
    """--mode fast compiles the step (inductor, real code generation) and computes the penalty
    through torch.func.grad. Tolerance: float32 results re-associated by fusion differ from
    eager in the last bits, about 1e-7 relative per operation, and such differences grow
    through the penalty's double backward to about 1e-6 relative (measured: 1.3e-6 on the
    baseline critic); we require 1e-4 relative on every statistic of one step, on every weight
    gradient of that step (in the 2-norm, relative to the network's whole gradient: entries
    that cancel to nearly zero, like the gradient of a bias followed by layer norm, which is
    zero in exact arithmetic, carry no meaningful relative error), and on every logged loss of three
    training iterations, where Adam's normalised updates keep the weights within a few
    learning rates of each other.

    --mode fast-bf16 rounds every convolution and matmul input to 8 mantissa bits (2^-9 = 2e-3
    relative), so one step is required to agree to 5e-2 relative on the losses and on the
    critic's weight gradient (in the 2-norm, whole and per tensor as above)."""
    cpu = torch.device("cpu")
    base = small_config(small_demo, arch="baseline", procedure="wgan-gp", iters=3)
    configure_numerics(cpu)
    exact = Trainer(base, small_demo, cpu)
    fast_cfg = RunConfig(**{**base.to_dict(), "mode": "fast"})
    configure_numerics(cpu, fast=True)
    fast = Trainer(fast_cfg, small_demo, cpu)
    assert fast.steps.name == "compiled" and exact.steps.name == "eager"

    e_stats, e_dg, e_gg = _one_step_grads(exact, 7)
    f_stats, f_dg, f_gg = _one_step_grads(fast, 7)
    for k in e_stats:
        torch.testing.assert_close(f_stats[k], e_stats[k], rtol=1e-4, atol=1e-6, msg=k)
    worst = {k: _rel(f_stats[k], e_stats[k]) for k in e_stats}
    for e_grads, f_grads in ((e_dg, f_dg), (e_gg, f_gg)):
        scale = torch.cat([g.flatten() for g in e_grads]).norm()
        for a, b in zip(e_grads, f_grads, strict=True):
            rel = float((b - a).norm() / scale)
            assert rel < 1e-4
            worst["gradients"] = max(worst.get("gradients", 0.0), rel)

    rng = torch.get_rng_state()  # both runs draw the same noise from the global stream
    e_rows = [exact.step() for _ in range(3)]
    torch.set_rng_state(rng)
    f_rows = [fast.step() for _ in range(3)]
    for er, fr in zip(e_rows, f_rows, strict=True):
        for k in er:
            torch.testing.assert_close(fr[k], er[k], rtol=1e-4, atol=1e-6, msg=k)
            worst["losses"] = max(worst.get("losses", 0.0), _rel(fr[k], er[k]))
    print("fast: worst relative difference from exact mode " + ", ".join(
        f"{k} {v:.1e}" for k, v in sorted(worst.items())))  # fmt: skip

    bf_cfg = RunConfig(**{**base.to_dict(), "mode": "fast-bf16"})
    configure_numerics(cpu, fast=True)
    exact2 = Trainer(base, small_demo, cpu)
    bf = Trainer(bf_cfg, small_demo, cpu)
    e_stats, e_dg, _ = _one_step_grads(exact2, 9)
    g = torch.Generator().manual_seed(9)
    real = torch.rand(4, 3, 64, 64, generator=g) * 2 - 1
    z = torch.randn(4, 128, generator=g)
    torch.randn(4, 128, generator=g)
    alpha = torch.rand(4, 1, 1, 1, generator=g)
    loss, b_stats = bf.steps.critic_forward(real, z, alpha)
    b_dg = torch.autograd.grad(loss, list(bf.D.parameters()))
    for k in ("critic_loss", "gp", "wdist"):
        torch.testing.assert_close(b_stats[k], e_stats[k], rtol=5e-2, atol=1e-3, msg=k)
    scale = torch.cat([g.flatten() for g in e_dg]).norm()
    errors = [float((b - a).norm() / scale) for a, b in zip(e_dg, b_dg, strict=True)]
    whole = float(torch.cat([(b - a).flatten() for a, b in zip(e_dg, b_dg, strict=True)]).norm()
                  / scale)  # fmt: skip
    print(f"fast-bf16: whole-gradient relative error {whole:.2e}, worst tensor {max(errors):.2e}")
    assert all(b.dtype == torch.float32 for b in b_dg)
    assert whole < 5e-2 and max(errors) < 5e-2
    configure_numerics(cpu)


def test_the_mode_is_in_the_run_id_and_in_every_record(tmp_path, small_demo):
    # PyTorch's Adam, the default when the mode was added (TF1's Adam is now: its ids changed)
    exact = small_config(small_demo, optimizer="adam-torch")
    assert "mode" not in exact.to_dict()  # exact runs keep the ids they always had
    fast = RunConfig(**{**exact.to_dict(), "mode": "fast"})
    assert fast.to_dict()["mode"] == "fast" and fast.run_id != exact.run_id
    # the run id of this config as computed before the mode existed (commit 4c2b5c4)
    assert exact.run_id == "baseline-wgan-gp-s0-213a90e257"

    args = ["train", "--arch", "mlp-generator", "--procedure", "lsgan", "--dim", "4",
            "--batch-size", "4", "--iters", "5", "--results", str(tmp_path), "--no-progress",
            "--no-count-flops"]  # fmt: skip
    r = run_cli(*args, "--fast")
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if (p / "config.json").exists()]
    doc = json.loads((run / "config.json").read_text())
    status = json.loads((run / "status.json").read_text())
    assert doc["config"]["mode"] == "fast" and status["mode"] == "fast"
    assert status["engine"] == "compiled"
    log = (run / "log.txt").read_text()
    assert "mode fast, engine compiled" in log
    state = load_final_state(run)
    assert state["config"]["mode"] == "fast"

    # Compilation is training time (GPU-hours) but not throughput: iteration 0 compiled the
    # critic step and iteration 1 the generator step; it/s (and so MFU) counts the other 3.
    secs, setup = status["train_seconds"], status["setup_seconds"]
    assert status["setup_iterations"] == 2 and 0 < setup < secs
    assert status["it_per_s"] == pytest.approx(3 / (secs - setup), rel=1e-12)
    assert (state["setup_iterations"], state["setup_seconds"]) == (2, setup)  # kept on resume
    assert f"{setup:.1f} s of it in 2 iterations that compiled or captured a step" in log

    r = run_cli(*args)  # exact mode on the CPU: eager, nothing to set up
    assert r.returncode == 0, r.stderr[-2000:]
    (run,) = (d for d in tmp_path.iterdir() if d.name != run.name and (d / "config.json").exists())
    status = json.loads((run / "status.json").read_text())
    assert status["engine"] == "eager" and status["mode"] == "exact"
    assert status["setup_iterations"] == 0 and status["setup_seconds"] == 0
    assert status["it_per_s"] == pytest.approx(5 / status["train_seconds"], rel=1e-12)


def test_set_up_time_survives_a_resume(small_demo):
    """The set-up time of every process of a run adds up through its checkpoints; a checkpoint
    written before it was kept resumes with none."""
    cpu = torch.device("cpu")
    a = Trainer(small_config(small_demo), small_demo, cpu)
    a.setup_seconds, a.setup_iterations = 1.5, 2
    state = a.state_dict({})
    b = Trainer(small_config(small_demo), small_demo, cpu)
    b.load_state_dict(state)
    assert (b.setup_seconds, b.setup_iterations) == (1.5, 2)
    old = {k: v for k, v in state.items() if not k.startswith("setup_")}
    b.load_state_dict(old)
    assert (b.setup_seconds, b.setup_iterations) == (0.0, 0)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(
    "arch,procedure",
    [("baseline", "wgan-gp"), ("resnet101", "wgan-gp"), ("baseline", "dcgan"),
     ("gated", "wgan"), ("mlp-generator", "lsgan")],
)  # fmt: skip
def test_cuda_graphs_are_bit_identical_to_eager(arch, procedure, small_demo):
    """Six iterations with whole critic and generator steps replayed from CUDA graphs
    against eager execution and against the plain eager port: every weight, optimiser state
    and statistic identical to the bit."""
    cuda = torch.device("cuda")
    cfg = small_config(small_demo, arch=arch, procedure=procedure, iters=6, dim=16,
                       batch_size=8)  # fmt: skip
    configure_numerics(cuda)
    runs = {}
    for graphs in (False, True):
        t = Trainer(cfg, small_demo, cuda, data_placement="device", cuda_graphs=graphs)
        assert t.steps.name == ("cuda-graphs" if graphs else "eager")
        rows = [{k: v.item() for k, v in t.step().items()} for _ in range(cfg.iters)]
        assert t.steps.name == ("cuda-graphs" if graphs else "eager"), t.steps.note
        assert t.steps.setups == (2 if graphs else 0)  # one capture per step, once
        runs[graphs] = (t, rows)
    (e, e_rows), (g, g_rows) = runs[False], runs[True]
    assert g_rows == e_rows
    for a, b in ((e.G, g.G), (e.D, g.D)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    for oa, ob in ((e.opt_g, g.opt_g), (e.opt_d, g.opt_d)):
        for sa, sb in zip(oa.state.values(), ob.state.values(), strict=True):
            for k in sa:
                assert torch.equal(sa[k], sb[k]), k
    ref = ReferenceCell(cfg, small_demo, cuda)
    for _ in range(cfg.iters):
        ref.step()
    for p, q in zip(g.D.parameters(), ref.D.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_fast_mode_trains_on_cuda(small_demo, tmp_path):
    """The compiled path on the GPU (Triton kernels), both fast modes, with losses close to
    exact mode's: fast-bf16 for three steps; fast under --compile-mode reduce-overhead (CUDA
    graph trees) for 20 iterations of a real run whose statistics are read every 10, so
    that each read meets outputs of ten later compiled calls (they overwrote them before
    the compiled engine copied them). The MLP generator and DCGAN: the smallest graphs to
    compile, so that gpu-check's cuda-tests box holds both compiles (step-times compiles
    baseline and ResNet-101 WGAN-GP on the GPU, each in its own capped process)."""
    from reproduce.rundir.rundir import RunDir
    from reproduce.training import loop as train

    from .conftest import quiet_runtime

    cuda = torch.device("cuda")
    base = small_config(small_demo, arch="mlp-generator", procedure="dcgan", dim=16,
                        batch_size=8, iters=20)  # fmt: skip
    configure_numerics(cuda)
    exact = Trainer(base, small_demo, cuda, cuda_graphs=False)
    e_rows = [exact.step() for _ in range(3)]
    configure_numerics(cuda, fast=True)
    t = Trainer(RunConfig(**{**base.to_dict(), "mode": "fast-bf16"}), small_demo, cuda)
    for er, fr in zip(e_rows, [t.step() for _ in range(3)], strict=True):
        torch.testing.assert_close(fr["critic_loss"], er["critic_loss"], rtol=1e-1, atol=1e-2)
    fast = RunConfig(**{**base.to_dict(), "mode": "fast"})
    rt = quiet_runtime(tmp_path, device="cuda", compile_mode="reduce-overhead", log_every=10)
    out = train.train_run(fast, rt, small_demo, RunDir(tmp_path / "r"), cuda)
    configure_numerics(cuda)
    assert out.state == "completed", out
    rows = [json.loads(x) for x in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(20))
    losses = [r["critic_loss"] for r in rows]
    assert len(set(losses)) == 20  # each row its own iteration's, none overwritten by a later
    for er, row in zip(e_rows, rows, strict=False):
        assert row["critic_loss"] == pytest.approx(er["critic_loss"].item(), rel=1e-2, abs=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_run_on_cuda_1_captures_and_trains_there(small_demo, tmp_path):
    """`--device cuda:1`: the CUDA-graph engine captures on GPU 1 (the run makes it current;
    capture streams are made on the current device) and the run equals the same run on
    GPU 0 to the bit, weights and statistics."""
    from reproduce.rundir.rundir import RunDir
    from reproduce.training import loop as train

    from .conftest import quiet_runtime

    cfg = small_config(small_demo, arch="baseline", procedure="wgan-gp", dim=16,
                       batch_size=8, iters=6)  # fmt: skip
    runs = {}
    for index in (0, 1):
        device = torch.device("cuda", index)
        rt = quiet_runtime(tmp_path / str(index), device=str(device), log_every=2)
        out = train.train_run(cfg, rt, small_demo, RunDir(tmp_path / f"r{index}"), device)
        assert out.state == "completed", out
        status = json.loads((tmp_path / f"r{index}" / "status.json").read_text())
        assert status["engine"] == "cuda-graphs", status
        runs[index] = (load_final_state(tmp_path / f"r{index}"),
                       (tmp_path / f"r{index}" / "stats.jsonl").read_text())  # fmt: skip
    (s0, rows0), (s1, rows1) = runs[0], runs[1]
    assert [json.loads(x)["critic_loss"] for x in rows0.splitlines()] == [
        json.loads(x)["critic_loss"] for x in rows1.splitlines()
    ]
    for net in ("generator", "critic"):
        for k, v in s0[net].items():
            assert torch.equal(v.cpu(), s1[net][k].cpu()), (net, k)


def test_compiled_statistics_outlive_the_next_compiled_call(small_demo, monkeypatch):
    """The statistics-lifetime rule of the compiled engine, with CUDA graph trees' call
    pattern on the CPU: a compiled function whose outputs live in static buffers that its
    next call overwrites (what reduce-overhead and max-autotune do on CUDA). The statistics
    the engine hands out must keep their values (StatsBuffer holds them for up to log_every
    iterations), and each compiled call is marked as a new step."""
    from reproduce.training import engines as engines

    cfg = RunConfig(**{**small_config(small_demo, dim=8, batch_size=4).to_dict(), "mode": "fast"})
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    t = Trainer(cfg, small_demo, torch.device("cpu"), compile_mode="reduce-overhead")
    eng = t.steps
    assert isinstance(eng, engines.CompiledSteps)
    static: dict[str, torch.Tensor] = {}

    def graph_tree_like(forward):
        def run(*args):
            loss, stats = forward(eng, *args)
            for k, v in stats.items():  # one buffer per output, rewritten at every call
                static.setdefault(k, torch.empty_like(v)).copy_(v.detach())
            return loss, dict(static)

        return run

    eng._critic_fn = graph_tree_like(engines.EagerSteps.critic_forward)
    eng._generator_fn = graph_tree_like(engines.EagerSteps.generator_forward)
    z = [torch.randn(4, 128, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    real = t.batches.next()
    alpha = torch.rand(4, 1, 1, 1)
    first = eng.critic_forward(real, z[0], alpha)[1]
    kept = {k: v.clone() for k, v in first.items()}
    second = eng.critic_forward(real, z[1], alpha)[1]
    assert any(not torch.equal(kept[k], second[k]) for k in kept)  # the calls differ
    for k in kept:
        assert torch.equal(first[k], kept[k]), k  # and the first call's values stayed
    g1 = eng.generator_forward(z[0])[1]
    g1_kept = {k: v.clone() for k, v in g1.items()}
    eng.generator_forward(z[1])
    assert all(torch.equal(g1[k], g1_kept[k]) for k in g1)
    assert len(marks) == 4  # each compiled call began a new step


def test_the_graph_check_compares_bits_so_a_nan_statistic_passes():
    """The CUDA graph's first-replay check (GraphedSteps._capture) compares to the bit: a NaN
    statistic reproduced by the replay passes (torch.equal called it a mismatch, and the run
    fell back to eager), while any other difference, a NaN's sign included, fails."""
    from reproduce.training.engines import same_bits

    a = torch.tensor([1.0, float("nan"), -0.0])
    assert same_bits(a, a.clone()) and not torch.equal(a, a.clone())
    assert not same_bits(a, torch.tensor([1.0, float("nan"), 0.0]))  # -0.0 is not 0.0
    assert not same_bits(a, torch.tensor([1.0, -float("nan"), -0.0]))
    assert not same_bits(a, a.double()) and not same_bits(a, a[:2])
    g = torch.randn(3, 4, 5)
    assert same_bits(g, g.clone()) and not same_bits(g, g + 1e-7)
    assert same_bits(torch.tensor(2.0), torch.tensor(2.0))  # 0-d statistics


def test_a_run_makes_its_cuda_device_current(small_demo, tmp_path, monkeypatch):
    """`--device cuda:1`: the run's device is current for the whole run (CUDA graph capture
    streams, events and torch-fidelity's `.cuda()` use the current device, cuda:0 unless
    set). On the CPU: the context a run enters for each device, and that train_run enters
    it around the whole run."""
    import contextlib

    from reproduce.rundir.rundir import RunDir
    from reproduce.training import loop as train

    from .conftest import quiet_runtime

    ctx = train.current_device(torch.device("cuda", 1))
    assert isinstance(ctx, torch.cuda.device) and ctx.idx == 1
    assert isinstance(train.current_device(torch.device("cpu")), contextlib.nullcontext)
    entered = []

    @contextlib.contextmanager
    def spy(device):
        entered.append(device)
        yield

    monkeypatch.setattr(train, "current_device", spy)
    cfg = small_config(small_demo, iters=1)
    out = train.train_run(cfg, quiet_runtime(tmp_path), small_demo, RunDir(tmp_path / "r"),
                          torch.device("cpu"))  # fmt: skip
    assert out.state == "completed" and entered == [torch.device("cpu")]


def test_iteration_times_on_cuda_are_the_device_s_not_the_host_s(small_demo, tmp_path, monkeypatch):
    """On CUDA a step only queues kernels: the host's clock around it measures the queueing,
    so stats.jsonl's per-iteration `time` (and `setup_seconds`, their sum over set-up
    iterations) would be far below the device's. They come from a CUDA event pair per
    iteration, read after the window's one host sync. On the CPU: the timer's CUDA branch
    with events of a simulated device that reaches each event 250 ms after the last."""
    import json

    from reproduce.rundir.rundir import RunDir
    from reproduce.training import bookkeeping
    from reproduce.training import loop as train

    from .conftest import quiet_runtime

    class DeviceEvent:
        clock = 0.0  # the simulated device's milliseconds

        def __init__(self, enable_timing=False):
            assert enable_timing
            self.at, self.done = None, False

        def record(self):
            DeviceEvent.clock += 250.0
            self.at = DeviceEvent.clock

        def synchronize(self):
            self.done = True

        def elapsed_time(self, end):
            assert end.done, "read before the device reached it"
            return end.at - self.at

    monkeypatch.setattr(torch.cuda, "Event", DeviceEvent)
    timer = getattr(bookkeeping, "IterationTimer", None)  # (absent: host times, which fail)
    if timer is not None:
        cuda_like = timer.__init__

        def init(self, device):
            cuda_like(self, device)
            self.cuda = True

        monkeypatch.setattr(timer, "__init__", init)
    cfg = small_config(small_demo, iters=6)
    out = train.train_run(cfg, quiet_runtime(tmp_path, log_every=4), small_demo,
                          RunDir(tmp_path / "r"), torch.device("cpu"))  # fmt: skip
    assert out.state == "completed"
    rows = [json.loads(x) for x in (tmp_path / "r" / "stats.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == list(range(6))
    assert [r["time"] for r in rows] == [0.25] * 6  # the device's, not the host's few ms
