"""Row 2 generator: no batch norm and a constant number of filters
(``WGANPaper_CrippledDCGANGenerator`` of gan_64x64.py, SPEC.md A.2).

Default tflib init (Linear glorot, deconvs he), no 0.02 override, no normalisation.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import Deconv2d, Linear, Padding, mirror, mirror_layers

Z_DIM = 128


class ConstantFilterGenerator(nn.Module):
    """z (B, 128) -> Linear, ReLU -> (B, d, 4, 4) -> 3 x (deconv5, ReLU) -> deconv5 -> 3, tanh."""

    def __init__(self, dim: int = 64, *, padding: Padding = "tf-same") -> None:
        super().__init__()
        self.dim = dim
        d = dim
        self.input = Linear(Z_DIM, 4 * 4 * d)
        self.net = nn.Sequential(
            Deconv2d(d, d, 5, padding=padding),
            nn.ReLU(),  # (B, d, 8, 8)
            Deconv2d(d, d, 5, padding=padding),
            nn.ReLU(),  # (B, d, 16, 16)
            Deconv2d(d, d, 5, padding=padding),
            nn.ReLU(),  # (B, d, 32, 32)
            Deconv2d(d, 3, 5, padding=padding),
            nn.Tanh(),  # (B, 3, 64, 64)
        )
        self.mirrored = mirror_layers(self.net, padding)

    def forward(self, z: Tensor) -> Tensor:
        x = self.input(z).relu().view(-1, self.dim, 4, 4)
        if self.mirrored:
            return mirror(self.net(mirror(x)))
        return self.net(x)
