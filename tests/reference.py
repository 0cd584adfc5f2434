"""A plain eager implementation of one cell, written the way public WGAN-GP ports are: eager
modules, ``autograd.grad(create_graph=True)`` for the penalty, default optimiser settings,
``requires_grad`` toggled in a Python loop over the critic's parameters, a ``zero_grad`` and a
``.item()`` per step for logging.

It is the yardstick of the speed targets (tests/benchmarks) and an independent check of the
training loop's maths: on the CPU it computes the same bits as ``Trainer.step``
(tests/test_speed.py). It shares only the networks, the data stream and TF RMSProp (a port has
to write that optimiser itself; PyTorch's RMSprop is another algorithm) with the package.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from architectures import Z_DIM, get_pair
from reproduce.config.run import RunConfig
from reproduce.data.datasets import BatchSource, ImageDataset
from reproduce.gan.optim import TFRMSprop
from reproduce.rng import seed_everything


class LoopTFAdam(torch.optim.Optimizer):
    """TF1's ApplyAdam kernel transcribed one parameter at a time (the reference that
    reproduce.gan.optim.TFAdam implements with foreach kernels): in float32,
    m += (g - m)(1 - b1); v += (g^2 - v)(1 - b2); w -= (m alpha) / (sqrt(v) + eps) with
    alpha = lr sqrt(1 - b2^t) / (1 - b1^t), b1^t and b2^t float32 running products."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self) -> None:
        f32 = torch.float32
        for group in self.param_groups:
            b1, b2 = (torch.tensor(b, dtype=f32) for b in group["betas"])
            p1, p2 = group.setdefault("loop_powers", [b1.clone(), b2.clone()])
            alpha = float(torch.tensor(group["lr"], dtype=f32) * torch.sqrt(1 - p2) / (1 - p1))
            eps = float(torch.tensor(group["eps"], dtype=f32))
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
                st["m"].add_((p.grad - st["m"]) * float(1 - b1))
                st["v"].add_((p.grad * p.grad - st["v"]) * float(1 - b2))
                p.sub_(st["m"] * alpha / (st["v"].sqrt() + eps))
            group["loop_powers"] = [p1 * b1, p2 * b2]


class ReferenceCell:
    def __init__(self, cfg: RunConfig, dataset: ImageDataset, device: torch.device) -> None:
        assert cfg.mode == "exact"
        self.cfg, self.device = cfg, device
        pair = get_pair(cfg.arch)
        seed_everything(cfg.seed)  # the same initial weights as the Trainer
        self.G = pair.generator(cfg.dim, cfg.padding, cfg.mlp_width).to(device)
        self.D = pair.critic(cfg.dim, cfg.critic_norm, cfg.padding).to(device)
        if cfg.optimizer == "adam-torch":
            betas = (cfg.beta1, cfg.beta2)
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
        elif cfg.optimizer == "adam-tf":
            betas = (cfg.beta1, cfg.beta2)
            self.opt_g = LoopTFAdam(self.G.parameters(), lr=cfg.lr, betas=betas)
            self.opt_d = LoopTFAdam(self.D.parameters(), lr=cfg.lr, betas=betas)
        else:
            assert cfg.optimizer == "rmsprop-tf"
            self.opt_g = TFRMSprop(self.G.parameters(), lr=cfg.lr)
            self.opt_d = TFRMSprop(self.D.parameters(), lr=cfg.lr)
        self.batches = BatchSource(dataset, cfg.batch_size, cfg.seed, device, placement="device")
        self.iteration = 0
        self.log: list[dict[str, float]] = []

    def _d_loss(self, d_real: Tensor, d_fake: Tensor) -> Tensor:
        p = self.cfg.procedure
        if p == "dcgan":
            return (F.softplus(d_fake).mean() + F.softplus(-d_real).mean()) / 2
        if p == "lsgan":
            return ((d_real - 1) ** 2).mean() / 2 + (d_fake**2).mean() / 2
        return d_fake.mean() - d_real.mean()

    def _g_loss(self, d_fake: Tensor) -> Tensor:
        p = self.cfg.procedure
        if p == "dcgan":
            return F.softplus(-d_fake).mean()
        if p == "lsgan":
            return ((d_fake - 1) ** 2).mean()
        return -d_fake.mean()

    def step(self) -> None:
        cfg, dev, B = self.cfg, self.device, self.cfg.batch_size
        row: dict[str, float] = {}
        if self.iteration > 0:
            for p in self.D.parameters():
                p.requires_grad = False
            z = torch.randn(B, Z_DIM, device=dev)
            g_loss = self._g_loss(self.D(self.G(z)))
            self.opt_g.zero_grad()
            g_loss.backward()
            self.opt_g.step()
            for p in self.D.parameters():
                p.requires_grad = True
            row["generator_loss"] = g_loss.item()
        for _ in range(cfg.n_critic):
            real = self.batches.next()
            z = torch.randn(B, Z_DIM, device=dev)
            alpha = torch.rand(B, 1, 1, 1, device=dev) if cfg.gp_lambda is not None else None
            with torch.no_grad():
                fake = self.G(z)
            d_real, d_fake = self.D(real), self.D(fake)
            d_loss = self._d_loss(d_real, d_fake)
            if alpha is not None:
                x_hat = (real + alpha * (fake - real)).requires_grad_(True)
                grad = torch.autograd.grad(self.D(x_hat).sum(), x_hat, create_graph=True)[0]
                slopes = torch.sqrt(torch.sum(grad.reshape(B, -1) ** 2, dim=1))
                d_loss = d_loss + cfg.gp_lambda * ((slopes - 1) ** 2).mean()
            self.opt_d.zero_grad()
            d_loss.backward()
            self.opt_d.step()
            if cfg.clip is not None:
                with torch.no_grad():
                    for p in self.D.parameters():
                        p.clamp_(-cfg.clip, cfg.clip)
        row["critic_loss"] = d_loss.item()
        self.log.append(row)
        self.iteration += 1
