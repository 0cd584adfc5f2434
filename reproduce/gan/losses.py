"""The objectives of the four procedures as pure functions (SPEC.md B.1).

Inputs are critic outputs (logits, shape (B,)); every loss is a batch mean, returned as a
0-dim tensor. ``d_real = D(x_real)``, ``d_fake = D(G(z))``. One signature per family:
``*_critic_loss(d_real, d_fake)`` and ``*_generator_loss(d_fake)``.

No torch at import (the procedure registry holds these functions and the command line reads
the registry): the DCGAN losses import ``torch.nn.functional`` where they run, a dictionary
lookup once torch is loaded, traced as usual by ``torch.compile``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


# --- DCGAN (non-saturating), sigmoid cross-entropy on logits ---------------------------------
def dcgan_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """[BCE(D_f, 0) + BCE(D_r, 1)] / 2 = [mean softplus(D_f) + mean softplus(-D_r)] / 2."""
    import torch.nn.functional as F

    return (F.softplus(d_fake).mean() + F.softplus(-d_real).mean()) / 2


def dcgan_generator_loss(d_fake: Tensor) -> Tensor:
    """BCE(D_f, 1) = mean softplus(-D_f)."""
    import torch.nn.functional as F

    return F.softplus(-d_fake).mean()


# --- LSGAN (a = 0, b = c = 1) -------------------------------------------------------------------
def lsgan_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """[mean (D_r - 1)^2 + mean D_f^2] / 2."""
    return ((d_real - 1).square().mean() + d_fake.square().mean()) / 2


def lsgan_generator_loss(d_fake: Tensor) -> Tensor:
    """mean (D_f - 1)^2 (the authors' code has no 1/2 here)."""
    return (d_fake - 1).square().mean()


# --- Wasserstein (weight clipping and gradient penalty share these) -------------------------
def wasserstein_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """mean D_f - mean D_r (the penalty, if any, is added by the procedure)."""
    return d_fake.mean() - d_real.mean()


def wasserstein_generator_loss(d_fake: Tensor) -> Tensor:
    """-mean D_f."""
    return -d_fake.mean()


def wasserstein_estimate(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E[D(real)] - E[D(fake)], logged for every procedure (SPEC.md E.13)."""
    return d_real.mean() - d_fake.mean()
