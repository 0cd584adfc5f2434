"""Row 5: gated multiplicative nonlinearities everywhere (``MultiplicativeDCGANGenerator`` and
``MultiplicativeDCGANDiscriminator`` of gan_64x64.py, SPEC.md A.5).

Each conv makes 2C channels; the normalisation (over all 2C) comes before the gate
sigmoid(even) * tanh(odd), which halves the channels. Default tflib init (no 0.02 override).
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import Conv2d, Deconv2d, Gate, Linear, Norm, Padding, mirror, mirror_layers, norm2d

Z_DIM = 128


class GatedGenerator(nn.Module):
    """z -> Linear -> (B, 16d, 4, 4) -> BN, gate -> 3 x (deconv5, BN, gate) -> deconv5, tanh."""

    def __init__(self, dim: int = 64, *, padding: Padding = "tf-same") -> None:
        super().__init__()
        self.dim = dim
        d = dim
        self.input = Linear(Z_DIM, 4 * 4 * 8 * d * 2)
        self.net = nn.Sequential(
            norm2d("batch", 16 * d),
            Gate(),  # (B, 8d, 4, 4)
            Deconv2d(8 * d, 8 * d, 5, padding=padding),  # (B, 8d, 8, 8)
            norm2d("batch", 8 * d),
            Gate(),  # (B, 4d, 8, 8)
            Deconv2d(4 * d, 4 * d, 5, padding=padding),
            norm2d("batch", 4 * d),
            Gate(),  # (B, 2d, 16, 16)
            Deconv2d(2 * d, 2 * d, 5, padding=padding),
            norm2d("batch", 2 * d),
            Gate(),  # (B, d, 32, 32)
            Deconv2d(d, 3, 5, padding=padding),
            nn.Tanh(),  # (B, 3, 64, 64)
        )
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, z: Tensor) -> Tensor:
        x = self.input(z).view(-1, 16 * self.dim, 4, 4)
        if self.mirrored:
            return mirror(self.net(mirror(x)))
        return self.net(x)


class GatedCritic(nn.Module):
    """image -> conv5 s2 -> 2d, gate -> 3 x (conv5 s2, Norm, gate) -> (B, 8d, 4, 4) -> Linear."""

    def __init__(self, dim: int = 64, *, norm: Norm, padding: Padding = "tf-same") -> None:
        super().__init__()
        d = dim
        self.net = nn.Sequential(
            Conv2d(3, 2 * d, 5, 2, padding=padding),
            Gate(),  # (B, d, 32, 32)
            Conv2d(d, 4 * d, 5, 2, padding=padding),
            norm2d(norm, 4 * d),
            Gate(),  # (B, 2d, 16, 16)
            Conv2d(2 * d, 8 * d, 5, 2, padding=padding),
            norm2d(norm, 8 * d),
            Gate(),  # (B, 4d, 8, 8)
            Conv2d(4 * d, 16 * d, 5, 2, padding=padding),
            norm2d(norm, 16 * d),
            Gate(),  # (B, 8d, 4, 4)
        )
        self.output = Linear(4 * 4 * 8 * d, 1)
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, x: Tensor) -> Tensor:
        h = mirror(self.net(mirror(x))) if self.mirrored else self.net(x)
        return self.output(h.flatten(1)).view(-1)
