"""The 32x32 CIFAR-10 generator and critic of Figure 3 (``gan_cifar.py``, SPEC.md C.5).

G: Linear 128 -> 4*4*4d, BatchNorm1d over those features, ReLU, reshape (4d, 4, 4); deconv5
4d -> 2d, BN, ReLU (8x8); 2d -> d, BN, ReLU (16x16); d -> 3, tanh (32x32).
D: conv5 stride 2 3 -> d, LeakyReLU 0.2; d -> 2d [norm], LReLU; 2d -> 4d [norm], LReLU;
Linear 4*4*4d -> 1. The critic's norm slots hold batch norm for DCGAN and weight clipping and
nothing under the gradient penalty (the CIFAR code has no layer norm). tflib's default
initialisers throughout (no 0.02 override). The authors' DIM is 128.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import (
    Conv2d,
    Deconv2d,
    Linear,
    Norm,
    Padding,
    activation,
    mirror,
    mirror_layers,
    norm2d,
)

Z_DIM = 128


class CifarGenerator(nn.Module):
    def __init__(self, dim: int = 128, padding: Padding = "tf-same") -> None:
        super().__init__()
        d = self.dim = dim
        self.input = nn.Sequential(
            Linear(Z_DIM, 4 * 4 * 4 * d),
            nn.BatchNorm1d(4 * 4 * 4 * d, eps=1e-5, track_running_stats=False),
            nn.ReLU(),
        )
        self.net = nn.Sequential(
            Deconv2d(4 * d, 2 * d, 5, padding=padding),  # (B, 2d, 8, 8)
            norm2d("batch", 2 * d),
            nn.ReLU(),
            Deconv2d(2 * d, d, 5, padding=padding),  # (B, d, 16, 16)
            norm2d("batch", d),
            nn.ReLU(),
            Deconv2d(d, 3, 5, padding=padding),  # (B, 3, 32, 32)
            nn.Tanh(),
        )
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, z: Tensor) -> Tensor:
        x = self.input(z).view(-1, 4 * self.dim, 4, 4)
        if self.mirrored:
            return mirror(self.net(mirror(x)))
        return self.net(x)


class CifarCritic(nn.Module):
    def __init__(self, dim: int = 128, *, norm: Norm, padding: Padding = "tf-same") -> None:
        super().__init__()
        d = dim
        self.net = nn.Sequential(
            Conv2d(3, d, 5, 2, padding=padding),  # (B, d, 16, 16)
            activation("lrelu"),
            Conv2d(d, 2 * d, 5, 2, padding=padding),  # (B, 2d, 8, 8)
            norm2d(norm, 2 * d),
            activation("lrelu"),
            Conv2d(2 * d, 4 * d, 5, 2, padding=padding),  # (B, 4d, 4, 4)
            norm2d(norm, 4 * d),
            activation("lrelu"),
        )
        self.output = Linear(4 * 4 * 4 * d, 1)
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, x: Tensor) -> Tensor:
        h = mirror(self.net(mirror(x))) if self.mirrored else self.net(x)
        return self.output(h.flatten(1)).view(-1)
