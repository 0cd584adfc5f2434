"""Critic regularisers: the WGAN-GP gradient penalty and WGAN weight clipping (SPEC.md B.1-B.2)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.func import functional_call


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


def gradient_penalty_func(
    critic: nn.Module, real: Tensor, fake: Tensor, alpha: Tensor
) -> tuple[Tensor, Tensor]:
    """The same penalty with the input gradient taken by ``torch.func.grad`` over a functional
    call of the critic: the form ``torch.compile`` traces (compiling the critic and calling
    ``autograd.grad(create_graph=True)`` on it is not supported). The result stays
    differentiable with respect to the critic's parameters. The interpolation, the gradient
    (in the dtype of x_hat) and its norm are float32 even when the critic runs under bf16
    autocast (fast-bf16 mode)."""
    x_hat = interpolate(real, fake, alpha).float()
    weights = {**dict(critic.named_parameters()), **dict(critic.named_buffers())}

    def total(x: Tensor) -> Tensor:
        return functional_call(critic, weights, (x,)).float().sum()

    grad = torch.func.grad(total)(x_hat)
    slopes = grad.float().flatten(1).square().sum(dim=1).sqrt()  # (B,)
    return (slopes - 1).square().mean(), slopes


@torch.no_grad()
def clip_weights_(params: Iterable[Tensor], c: float) -> None:
    """Clamp every given parameter to [-c, c] in place (WGAN; all critic parameters,
    biases and normalisation gamma/beta included, after every critic step: SPEC.md E.9)."""
    ps = list(params)
    if ps:
        torch._foreach_clamp_min_(ps, -c)
        torch._foreach_clamp_max_(ps, c)
