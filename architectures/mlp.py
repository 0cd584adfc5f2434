"""Row 3 generator: a 4-layer 512-wide ReLU MLP (``FCGenerator`` of gan_64x64.py, SPEC.md A.3).

Hidden layers use tflib's 'he' Linear init, the output layer glorot; no normalisation.

Width (SPEC.md E.19b), a named choice recorded in every MLP run's config:
  scaled     8 * dim (the default): the width option scales this generator with every other
             network, so a small-width run keeps the paper's balance between G and D;
  fixed-512  the authors' code: FC_DIM = 512 whatever DIM is.
Both are 512 at the paper's DIM 64, so the paper's network is the same either way.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from .layers import Linear

Z_DIM = 128
FC_DIM = 512  # the authors' fixed width (gan_64x64.py)
MLPWidth = Literal["scaled", "fixed-512"]
MLP_WIDTHS: tuple[MLPWidth, ...] = ("scaled", "fixed-512")


def mlp_width(dim: int, choice: MLPWidth = "scaled") -> int:
    """Hidden width of the MLP generator for base width ``dim`` under ``choice``."""
    if choice == "scaled":
        return 8 * dim
    if choice == "fixed-512":
        return FC_DIM
    raise ValueError(f"MLP width must be one of {MLP_WIDTHS}, got {choice!r}")


class MLPGenerator(nn.Module):
    """z (B, 128) -> 4 x (Linear he, ReLU), width w -> Linear, tanh -> (B, 3, 64, 64), with
    w = ``mlp_width(dim, width)``."""

    def __init__(self, dim: int = 64, width: MLPWidth = "scaled") -> None:
        super().__init__()
        w = mlp_width(dim, width)
        self.net = nn.Sequential(
            Linear(Z_DIM, w, init="he"),
            nn.ReLU(),
            Linear(w, w, init="he"),
            nn.ReLU(),
            Linear(w, w, init="he"),
            nn.ReLU(),
            Linear(w, w, init="he"),
            nn.ReLU(),
            Linear(w, 3 * 64 * 64),
            nn.Tanh(),
        )

    def forward(self, z: Tensor) -> Tensor:
        # flat vectors are (C, H, W)-major (SPEC.md A.0)
        return self.net(z).view(-1, 3, 64, 64)
