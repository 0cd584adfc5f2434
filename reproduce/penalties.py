"""Critic regularisers: the WGAN-GP gradient penalty and WGAN weight clipping (SPEC.md B.1-B.2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def interpolate(real: Tensor, fake: Tensor, alpha: Tensor) -> Tensor:
    """x_hat = x_real + alpha (x_fake - x_real); alpha (B, 1, 1, 1) ~ U[0, 1), one per sample.

    This is the image code's form (SPEC.md E.18: the toy code puts alpha on the real sample;
    both give the same distribution of x_hat).
    """
    return real + alpha * (fake - real)


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """Two-sided penalty mean_b (||dD(x_hat_b)/dx_hat_b||_2 - 1)^2 and the slopes (B,).

    The norm runs over all C*H*W entries of each sample, with no epsilon inside the sqrt (the
    authors' code). ``real``/``fake`` are (B, C, H, W); ``fake`` must not carry generator
    gradients (the critic step does not update G). The graph is kept (create_graph=True) so
    that the penalty can be back-propagated into the critic's weights.
    """
    x_hat = interpolate(real, fake, alpha).requires_grad_(True)
    d_hat = critic(x_hat)  # (B,)
    (grad,) = torch.autograd.grad(d_hat.sum(), x_hat, create_graph=True)
    slopes = grad.flatten(1).square().sum(dim=1).sqrt()  # (B,)
    return (slopes - 1).square().mean(), slopes


@torch.no_grad()
def clip_weights_(params: Iterable[Tensor], c: float) -> None:
    """Clamp every given parameter to [-c, c] in place (WGAN; all critic parameters,
    biases and normalisation gamma/beta included, after every critic step: SPEC.md E.9)."""
    ps = list(params)
    if ps:
        torch._foreach_clamp_min_(ps, -c)
        torch._foreach_clamp_max_(ps, c)
