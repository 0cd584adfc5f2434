"""Row 3 generator: a 4-layer 512-wide ReLU MLP (``FCGenerator`` of gan_64x64.py, SPEC.md A.3).

Hidden layers use tflib's 'he' Linear init, the output layer glorot; no normalisation.

Its width is a named choice (SPEC.md E.19b; ``choices.mlp_width``): 8 * dim by default, or
the authors' fixed 512.
"""

from __future__ import annotations

from torch import Tensor, nn

from .choices import MLPWidth, mlp_width
from .layers import Linear

Z_DIM = 128


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
