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
from reproduce.config import RunConfig
from reproduce.data import BatchSource, ImageDataset
from reproduce.optim import TFRMSprop
from reproduce.train import seed_everything


class ReferenceCell:
    def __init__(self, cfg: RunConfig, dataset: ImageDataset, device: torch.device) -> None:
        assert cfg.mode == "exact"
        self.cfg, self.device = cfg, device
        pair = get_pair(cfg.arch)
        seed_everything(cfg.seed)  # the same initial weights as the Trainer
        self.G = pair.generator(cfg.dim, cfg.padding).to(device)
        self.D = pair.critic(cfg.dim, cfg.critic_norm, cfg.padding).to(device)
        if cfg.optimizer == "adam":
            betas = (cfg.beta1, cfg.beta2)
            self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=betas)
            self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr, betas=betas)
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
