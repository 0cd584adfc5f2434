"""DCGAN generator and critic (``DCGANGenerator`` / ``DCGANDiscriminator`` of gan_64x64.py).

Used by rows 1 (baseline), 4 (no normalisation) and 6 (tanh), and the critic also by rows 2
and 3 (SPEC.md A.1, A.4, A.6). Every layer built by these two functions in the authors' code
uses tflib's weights-stdev override of 0.02, still *uniform*: U(-0.0346, 0.0346).
"""

from __future__ import annotations

from typing import Literal

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

DCGAN_STD = 0.02  # tflib set_weights_stdev(0.02) inside DCGANGenerator / DCGANDiscriminator
Z_DIM = 128


class DCGANGenerator(nn.Module):
    """z (B, 128) -> Linear -> (B, 8d, 4, 4) -> 4 x deconv5 -> image (B, 3, 64, 64) in [-1, 1].

    ``bn=False`` removes every batch norm (row 4); ``nonlinearity`` replaces the hidden ReLUs
    (row 6 uses tanh).
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        bn: bool = True,
        nonlinearity: Literal["relu", "tanh"] = "relu",
        padding: Padding = "tf-same",
    ) -> None:
        super().__init__()
        self.dim = dim
        d, std = dim, DCGAN_STD
        norm: Norm = "batch" if bn else "none"
        self.input = Linear(Z_DIM, 4 * 4 * 8 * d, weights_std=std)
        self.net = nn.Sequential(
            norm2d(norm, 8 * d),
            activation(nonlinearity),
            Deconv2d(8 * d, 4 * d, 5, weights_std=std, padding=padding),  # (B, 4d, 8, 8)
            norm2d(norm, 4 * d),
            activation(nonlinearity),
            Deconv2d(4 * d, 2 * d, 5, weights_std=std, padding=padding),  # (B, 2d, 16, 16)
            norm2d(norm, 2 * d),
            activation(nonlinearity),
            Deconv2d(2 * d, d, 5, weights_std=std, padding=padding),  # (B, d, 32, 32)
            norm2d(norm, d),
            activation(nonlinearity),
            Deconv2d(d, 3, 5, weights_std=std, padding=padding),  # (B, 3, 64, 64)
            nn.Tanh(),
        )
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, z: Tensor) -> Tensor:
        x = self.input(z).view(-1, 8 * self.dim, 4, 4)
        if self.mirrored:
            return mirror(self.net(mirror(x)))
        return self.net(x)


class DCGANCritic(nn.Module):
    """image (B, 3, 64, 64) -> 4 x conv5 stride 2 -> (B, 8d, 4, 4) -> Linear -> (B,) scalar.

    ``norm`` fills the three normalisation slots after convs 2-4 (none after conv 1): "batch"
    for DCGAN/LSGAN/WGAN-clip, "layer" under WGAN-GP, "none" for row 4.
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        norm: Norm,
        nonlinearity: Literal["lrelu", "tanh"] = "lrelu",
        padding: Padding = "tf-same",
    ) -> None:
        super().__init__()
        d, std = dim, DCGAN_STD
        self.net = nn.Sequential(
            Conv2d(3, d, 5, 2, weights_std=std, padding=padding),
            activation(nonlinearity),
            Conv2d(d, 2 * d, 5, 2, weights_std=std, padding=padding),  # (B, 2d, 16, 16)
            norm2d(norm, 2 * d),
            activation(nonlinearity),
            Conv2d(2 * d, 4 * d, 5, 2, weights_std=std, padding=padding),  # (B, 4d, 8, 8)
            norm2d(norm, 4 * d),
            activation(nonlinearity),
            Conv2d(4 * d, 8 * d, 5, 2, weights_std=std, padding=padding),  # (B, 8d, 4, 4)
            norm2d(norm, 8 * d),
            activation(nonlinearity),
        )
        self.output = Linear(4 * 4 * 8 * d, 1, weights_std=std)
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, x: Tensor) -> Tensor:
        h = mirror(self.net(mirror(x))) if self.mirrored else self.net(x)
        return self.output(h.flatten(1)).view(-1)
