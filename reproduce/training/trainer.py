"""One run's state and one iteration: ``Trainer`` owns the networks, optimisers, data
position, fixed noise and RNG state of a run (all in its checkpoint), and ``step`` runs one
generator iteration through the engine (engines.py). The run around it (lease, resume,
statistics, checkpoints, evaluation) is loop.py.

For iteration 0 .. iters-1: one generator step (skipped at iteration 0), then ``n_critic``
critic steps, each on a fresh real batch and fresh noise (SPEC.md B.2).
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from architectures import Z_DIM, get_pair

from .. import faults
from ..config.run import RunConfig
from ..data.datasets import BatchSource, DataPosition, ImageDataset, derive_seed, scale_images
from ..data.images import to_uint8
from ..errors import UserError
from ..gan.procedures import Procedure, get_procedure
from ..rng import rng_state, seed_everything, set_rng_state
from . import engines as steps
from .stopping import StopFlag

N_FIXED_SAMPLES = 64  # the 8x8 fixed-noise grid (SPEC.md B.5)


class IterationAbandoned(Exception):
    """A stop request outlived its grace time in the middle of an iteration."""

    def __init__(self, iteration: int, critic_steps: int) -> None:
        super().__init__(f"iteration {iteration} abandoned after {critic_steps} critic steps")
        self.iteration, self.critic_steps = iteration, critic_steps


def resolve_device(name: str) -> torch.device:
    """``--device`` as a torch device (``auto``: CUDA when there is one), checked: UserError
    for a name torch does not know, a CUDA device this machine lacks, or another device type."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device: unknown device {name!r}; use cpu, cuda, cuda:N or auto"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device: CUDA requested but not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(
                f"--device: {name} requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    elif dev.type != "cpu":
        raise UserError(f"--device: unsupported device type {dev.type!r}; use cpu or cuda")
    return dev


def configure_numerics(device: torch.device, fast: bool = False) -> None:
    """Exact mode: fp32 everywhere, no TF32, deterministic cuDNN (SPEC.md: faithful numerics).
    Fast modes: TF32 matmuls and convolutions, cuDNN's autotuner."""
    torch.backends.cuda.matmul.allow_tf32 = fast
    torch.backends.cudnn.allow_tf32 = fast
    torch.set_float32_matmul_precision("high" if fast else "highest")
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = not fast
        torch.backends.cudnn.benchmark = fast


def make_steps(
    trainer: Trainer, cuda_graphs: bool | None = None, compile_mode: str = "default"
) -> steps.EagerSteps:
    """The engine for this run: compiled under the fast modes; CUDA graphs for exact runs on a
    CUDA device (unless ``cuda_graphs`` is False); eager otherwise."""
    t = trainer
    args = (t.G, t.D, t.proc, t.hp, t.opt_g, t.opt_d)
    if t.cfg.fast:
        return steps.CompiledSteps(
            *args, device=t.device, bf16=t.cfg.bf16, compile_mode=compile_mode
        )
    if t.device.type == "cuda" and cuda_graphs is not False:
        pair = get_pair(t.cfg.arch)
        return steps.GraphedSteps(
            *args,
            batch_size=t.cfg.batch_size,
            image_shape=(3, pair.resolution, pair.resolution),
            z_dim=Z_DIM,
            device=t.device,
            penalty=t.proc.uses_penalty,
        )
    return steps.EagerSteps(*args)


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "cuda": str(torch.version.cuda) if torch.version.cuda else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def one_iteration(
    iteration: int,
    n_critic: int,
    generator: Callable[[], steps.Stats] | None,
    critic: Callable[[int], steps.Stats],
) -> steps.Stats:
    """The schedule of one generator iteration, for every run (image and toy): the generator
    step first, skipped at iteration 0 (the authors' order, SPEC.md B.2; ``generator`` None: a
    fixed generator), then ``critic(k)`` for k = 0 .. n_critic - 1, each on fresh inputs. The
    statistics of the generator step and of the last critic step (as the authors log them)."""
    stats: steps.Stats = {}
    if iteration > 0 and generator is not None:
        stats.update(generator())  # the engine freezes the critic during the generator step
    last: steps.Stats = {}
    for k in range(n_critic):
        last = critic(k)
    stats.update(last)
    return stats


class Trainer:
    """Owns the networks, optimisers, data position and statistics of one run."""

    def __init__(
        self,
        cfg: RunConfig,
        dataset: ImageDataset,
        device: torch.device,
        data_placement: str = "auto",
        cuda_graphs: bool | None = None,
        compile_mode: str = "default",
        share_gpu: int = 1,
    ) -> None:
        if faults.active("oom", "build"):
            raise torch.OutOfMemoryError("CUDA out of memory (injected: oom@build)")
        self.cfg = cfg
        self.device = device
        self.proc: Procedure = get_procedure(cfg.procedure)
        self.hp = cfg.hyperparameters
        pair = get_pair(cfg.arch)
        # Weights are initialised on the CPU from the run seed (identical on every device).
        seed_everything(cfg.seed)
        self.G: nn.Module = pair.generator(cfg.dim, cfg.padding, cfg.mlp_width).to(device)
        self.D: nn.Module = pair.critic(cfg.dim, cfg.critic_norm, cfg.padding).to(device)
        fused = cfg.fast and self.hp.optimizer == "adam-torch"
        self.opt_g = self.proc.make_optimizer(self.G.parameters(), self.hp, fused=fused)
        self.opt_d = self.proc.make_optimizer(self.D.parameters(), self.hp, fused=fused)
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "fixed-noise"))
        self.fixed_noise = torch.randn(N_FIXED_SAMPLES, Z_DIM, generator=g).to(device)  # (64, 128)
        self.batches = BatchSource(
            dataset, cfg.batch_size, cfg.seed, device, placement=data_placement, share=share_gpu
        )
        self.iteration = 0  # generator iterations done
        self.train_seconds = 0.0  # cumulative training time, excluding checkpoints and samples
        # the part of it spent in iterations that compiled or captured a step (all processes)
        self.setup_seconds = 0.0
        self.setup_iterations = 0
        self.stat_keys = ["critic_loss", "wdist", "d_real", "d_fake"]
        if self.proc.uses_penalty:
            self.stat_keys.append("gp")
        self.steps = make_steps(self, cuda_graphs, compile_mode)

    # -- state -------------------------------------------------------------------------------
    def state_dict(self, env: dict[str, Any]) -> dict[str, Any]:
        return {
            "format": 1,
            "iteration": self.iteration,
            "generator": self.G.state_dict(),
            "critic": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "data": self.batches.position.to_dict(),
            "rng": rng_state(self.device),
            "fixed_noise": self.fixed_noise.cpu(),
            "train_seconds": self.train_seconds,
            "setup_seconds": self.setup_seconds,
            "setup_iterations": self.setup_iterations,
            "config_hash": self.cfg.hash(),
            "config": self.cfg.to_dict(),
            "env": env,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["generator"])
        self.D.load_state_dict(state["critic"])
        if not faults.active("skip-restore", "optimizer"):
            self.opt_g.load_state_dict(state["opt_g"])
            self.opt_d.load_state_dict(state["opt_d"])
        if not faults.active("skip-restore", "data"):
            self.batches.sampler.position = DataPosition(**state["data"])
        if not faults.active("skip-restore", "rng"):
            set_rng_state(state["rng"], self.device)
        self.fixed_noise = state["fixed_noise"].to(self.device)
        self.iteration = int(state["iteration"])
        self.train_seconds = float(state["train_seconds"])
        self.setup_seconds = float(state.get("setup_seconds", 0.0))  # absent before they were kept
        self.setup_iterations = int(state.get("setup_iterations", 0))

    # -- one generator iteration ---------------------------------------------------------------
    def step(self, stop: StopFlag | None = None) -> dict[str, Tensor]:
        """Run iteration ``self.iteration``; returns its statistics as device tensors. Raises
        ``IterationAbandoned`` between critic steps when ``stop`` is overdue (the trainer's
        state is then part-way through an iteration: never save it)."""
        cfg, proc, dev = self.cfg, self.proc, self.device
        critic_sleep = float(faults.value("critic-sleep") or 0.0)
        it = self.iteration

        def generator() -> steps.Stats:
            z = torch.randn(cfg.batch_size, Z_DIM, device=dev)  # (B, 128)
            return self.steps.generator(z)

        def critic(k: int) -> steps.Stats:
            if stop is not None and stop.overdue():
                raise IterationAbandoned(it, k)
            real = self.batches.next()  # (B, 3, 64, 64), a fresh batch per critic step
            if faults.active("nan", it):
                real = real * float("nan")
            if faults.active("oom", it):
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected: oom@{it})")
            z = torch.randn(cfg.batch_size, Z_DIM, device=dev)
            alpha = torch.rand(cfg.batch_size, 1, 1, 1, device=dev) if proc.uses_penalty else None
            stats = self.steps.critic(real, z, alpha)
            if critic_sleep:
                time.sleep(critic_sleep)
            return stats

        stats = one_iteration(it, self.hp.n_critic, generator, critic)
        self.iteration += 1
        return stats

    def heldout(self, val: ImageDataset) -> dict[str, float]:
        """The critic loss (penalty included) and its parts on a held-out batch, at the
        current weights, without updating anything (Figure 5a). Batch, noise and interpolation
        come from a generator seeded by (seed, iteration), never from the training streams,
        so computing it changes no training number and a resume recomputes the same value."""
        cfg, dev = self.cfg, self.device
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, "heldout", self.iteration))
        idx = torch.randint(0, len(val), (cfg.batch_size,), generator=g)
        real = scale_images(val.images[idx].to(dev))
        z = torch.randn(cfg.batch_size, Z_DIM, generator=g).to(dev)
        alpha = (
            torch.rand(cfg.batch_size, 1, 1, 1, generator=g).to(dev)
            if self.proc.uses_penalty
            else None
        )
        res = self.proc.critic_step(self.G, self.D, real, z, alpha, self.hp)
        keys = list(res.stats)
        values = torch.stack([res.stats[k] for k in keys]).tolist()  # one host sync
        return dict(zip(keys, values, strict=True))

    @torch.no_grad()
    def samples(self) -> Tensor:
        """(64, 3, 64, 64) uint8 from the fixed noise, batch-statistics BN as in training."""
        return to_uint8(self.G(self.fixed_noise)).cpu()

    def parameters_finite(self) -> bool:
        params = [p.detach() for m in (self.G, self.D) for p in m.parameters()]
        return bool(torch.stack([p.isfinite().all() for p in params]).all())


def steady_rate(trainer: Trainer) -> float | None:
    """Generator iterations per second of training, leaving out the iterations that compiled
    or captured a step (a one-off cost, kept in ``train_seconds`` and so in GPU-hours): the
    rate the run settles at, which MFU and time estimates use. None until it is measurable."""
    iters = trainer.iteration - trainer.setup_iterations
    secs = trainer.train_seconds - trainer.setup_seconds
    return iters / secs if iters > 0 and secs > 0 else None
