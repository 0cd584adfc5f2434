"""Losses, the gradient penalty, weight clipping and TF-RMSProp against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from reproduce.gan import losses
from reproduce.gan.optim import TFAdam, TFRMSprop
from reproduce.gan.penalties import clip_weights_, gradient_penalty, interpolate

D_REAL = torch.tensor([2.0, -1.0, 0.5])
D_FAKE = torch.tensor([-3.0, 0.25, 1.5])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def mean(xs) -> float:
    return sum(xs) / len(xs)


def test_dcgan_losses():
    r, f = D_REAL.tolist(), D_FAKE.tolist()
    # BCE(logit, 1) = softplus(-logit); BCE(logit, 0) = softplus(logit)
    expected_d = (mean([softplus(x) for x in f]) + mean([softplus(-x) for x in r])) / 2
    expected_g = mean([softplus(-x) for x in f])
    assert losses.dcgan_critic_loss(D_REAL, D_FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert losses.dcgan_generator_loss(D_FAKE).item() == pytest.approx(expected_g, rel=1e-6)
    # agrees with PyTorch's sigmoid cross-entropy
    bce = nn.functional.binary_cross_entropy_with_logits
    ref = (bce(D_FAKE, torch.zeros(3)) + bce(D_REAL, torch.ones(3))) / 2
    assert torch.allclose(losses.dcgan_critic_loss(D_REAL, D_FAKE), ref)


def test_lsgan_losses():
    r, f = D_REAL.tolist(), D_FAKE.tolist()
    expected_d = (mean([(x - 1) ** 2 for x in r]) + mean([x**2 for x in f])) / 2
    expected_g = mean([(x - 1) ** 2 for x in f])  # no 1/2 (authors' code)
    assert losses.lsgan_critic_loss(D_REAL, D_FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert losses.lsgan_generator_loss(D_FAKE).item() == pytest.approx(expected_g, rel=1e-6)


def test_wasserstein_losses():
    r, f = D_REAL.tolist(), D_FAKE.tolist()
    assert losses.wasserstein_critic_loss(D_REAL, D_FAKE).item() == pytest.approx(mean(f) - mean(r))
    assert losses.wasserstein_generator_loss(D_FAKE).item() == pytest.approx(-mean(f))
    assert losses.wasserstein_estimate(D_REAL, D_FAKE).item() == pytest.approx(mean(r) - mean(f))


class LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.tensor(b))

    def forward(self, x):
        return (x.flatten(1) * self.w.flatten()).sum(1) + self.b


def test_gradient_penalty_of_a_linear_critic_is_closed_form():
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4) * 0.3
    critic = LinearCritic(w, 0.7)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    alpha = torch.rand(5, 1, 1, 1)
    gp, slopes = gradient_penalty(critic, real, fake, alpha)
    norm = w.norm().item()  # the gradient of <w, x> + b is w everywhere
    assert torch.allclose(slopes, torch.full((5,), norm), rtol=1e-6)
    assert gp.item() == pytest.approx((norm - 1) ** 2, rel=1e-5)
    # the penalty is differentiable in the critic's weights: d/dw (||w|| - 1)^2 = 2(||w||-1) w/||w||
    gp.backward()
    assert torch.allclose(critic.w.grad, 2 * (norm - 1) * w / norm, rtol=1e-4, atol=1e-6)
    assert critic.b.grad is None or critic.b.grad.item() == 0.0  # the bias does not enter


def test_gradient_penalty_uses_one_alpha_per_sample_and_no_epsilon():
    # D(x) = 0.5 ||x||^2 -> grad = x_hat; real = 0 so x_hat = alpha * fake, slope = alpha ||fake||
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * x.flatten(1).square().sum(1)

    fake = torch.ones(4, 3, 2, 2)  # ||fake|| = sqrt(12)
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(4, 1, 1, 1)
    gp, slopes = gradient_penalty(Quadratic(), torch.zeros_like(fake), fake, alpha)
    expected = alpha.flatten() * math.sqrt(12)
    assert torch.allclose(slopes, expected)
    assert slopes[0].item() == 0.0  # sqrt(0) exactly: no epsilon inside the root
    assert gp.item() == pytest.approx(((expected - 1) ** 2).mean().item(), rel=1e-6)
    assert torch.equal(
        interpolate(torch.zeros(1), torch.ones(1), torch.tensor([0.3])), torch.tensor([0.3])
    )


def test_clip_weights_clips_every_parameter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)
    clip_weights_(net.parameters(), 0.01)
    for p in net.parameters():  # weights, biases and BN gamma/beta
        assert p.abs().max().item() <= 0.01
    assert any((p.abs() == 0.01).any() for p in net.parameters())


def test_tf_rmsprop_one_update_by_hand():
    w0 = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    g = np.array([0.5, 0.1, -3.0], dtype=np.float32)
    lr = 1e-3
    # TF1: ms starts at 1; ms = ms + (g^2 - ms) * (1 - 0.9); w -= lr * g / sqrt(ms + 1e-10)
    ms = np.float32(1.0) + (g * g - np.float32(1.0)) * (np.float32(1.0) - np.float32(0.9))
    expected = w0 - np.float32(lr) * g / np.sqrt(ms + np.float32(1e-10))

    w = nn.Parameter(torch.from_numpy(w0.copy()))
    opt = TFRMSprop([w], lr=lr)
    (w * torch.from_numpy(g)).sum().backward()
    opt.step()
    assert np.array_equal(w.detach().numpy(), expected.astype(np.float32))
    assert np.array_equal(opt.state[w]["ms"].numpy(), ms)
    # in float64 terms the first step is lr g / sqrt(0.9 + 0.1 g^2) (PyTorch: ~ lr sign(g) / 0.1)
    approx = w0.astype(np.float64) - lr * g / np.sqrt(0.9 + 0.1 * g.astype(np.float64) ** 2)
    assert np.allclose(w.detach().numpy(), approx, rtol=1e-6)
    ref = nn.Parameter(torch.from_numpy(w0.copy()))
    torch_opt = torch.optim.RMSprop([ref], lr=lr)
    (ref * torch.from_numpy(g)).sum().backward()
    torch_opt.step()
    assert not torch.allclose(ref, w)  # PyTorch's RMSprop is a different optimiser


def test_tf_rmsprop_with_momentum_matches_tf_kernel():
    w0 = np.array([0.3, -0.7], dtype=np.float32)
    grads = [np.array([0.2, -0.4], dtype=np.float32), np.array([1.0, 0.5], dtype=np.float32)]
    lr, mu = np.float32(0.01), np.float32(0.9)
    w, ms, mom = w0.copy(), np.ones(2, np.float32), np.zeros(2, np.float32)
    for g in grads:
        ms = ms + (g * g - ms) * (np.float32(1) - np.float32(0.9))
        mom = mom * mu + lr * g / np.sqrt(ms + np.float32(1e-10))
        w = w - mom
    p = nn.Parameter(torch.from_numpy(w0.copy()))
    opt = TFRMSprop([p], lr=0.01, momentum=0.9)
    for g in grads:
        opt.zero_grad()
        (p * torch.from_numpy(g)).sum().backward()
        opt.step()
    assert np.allclose(p.detach().numpy(), w, rtol=1e-6, atol=1e-8)


def test_tf_rmsprop_rejects_bad_settings():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError):
        TFRMSprop(p, lr=0)
    with pytest.raises(ValueError):
        TFRMSprop(p, lr=1e-4, decay=1.0)


@pytest.mark.parametrize("beta2", [0.9, 0.999])
def test_tf_adam_follows_the_tf1_kernel_by_hand(beta2):
    """TF1's ApplyAdam, transcribed in numpy float32 for five steps: alpha = lr sqrt(1 - b2^t)
    / (1 - b1^t) with b^t float32 running products; m += (g - m)(1 - b1); v += (g^2 - v)(1 -
    b2); w -= (m alpha) / (sqrt(v) + eps). Same operations in the same order: tolerance 0."""
    f = np.float32
    lr, b1, b2, eps = f(1e-4), f(0.5), f(beta2), f(1e-8)
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(64).astype(f)
    grads = [(rng.standard_normal(64) * 10.0 ** rng.integers(-7, 1, 64)).astype(f)
             for _ in range(5)]  # fmt: skip
    w, m, v, p1, p2 = w0.copy(), np.zeros(64, f), np.zeros(64, f), b1, b2
    for g in grads:
        alpha = lr * np.sqrt(f(1) - p2) / (f(1) - p1)
        m = m + (g - m) * (f(1) - b1)
        v = v + (g * g - v) * (f(1) - b2)
        w = w - (m * alpha) / (np.sqrt(v) + eps)
        p1, p2 = p1 * b1, p2 * b2
    p = nn.Parameter(torch.from_numpy(w0.copy()))
    opt = TFAdam([p], lr=1e-4, betas=(0.5, beta2))
    torch_p = nn.Parameter(torch.from_numpy(w0.copy()))
    torch_opt = torch.optim.Adam([torch_p], lr=1e-4, betas=(0.5, beta2), eps=1e-8)
    for t, g in enumerate(grads):
        p.grad, torch_p.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
        opt.step()
        torch_opt.step()
        if t == 0:
            # step 1 is lr g / (|g| + eps / sqrt(1 - b2)) in TF, lr g / (|g| + eps) in
            # PyTorch: where |g| is not far above eps, TF's step is visibly smaller
            tf_step = np.abs(p.detach().numpy() - w0)
            torch_step = np.abs(torch_p.detach().numpy() - w0)
            small = np.abs(g) < 1e-7
            assert small.any() and np.all(tf_step[small] < 0.9 * torch_step[small])
    assert np.array_equal(p.detach().numpy(), w)
    assert np.array_equal(opt.state[p]["m"].numpy(), m)
    assert np.array_equal(opt.state[p]["v"].numpy(), v)


def test_tf_adam_rejects_bad_settings():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError):
        TFAdam(p, lr=0)
    with pytest.raises(ValueError):
        TFAdam(p, lr=1e-4, betas=(0.5, 1.0))
