"""Row 3 generator: a 4-layer 512-wide ReLU MLP (``FCGenerator`` of gan_64x64.py, SPEC.md A.3).

Hidden layers use tflib's 'he' Linear init, the output layer glorot; no normalisation.
The authors' width is a fixed 512 (``FC_DIM``); here it is 8 * dim so that the width option
scales every architecture (8 * 64 = 512 at the paper's DIM, so the default is exact).
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import Linear

Z_DIM = 128


class MLPGenerator(nn.Module):
    """z (B, 128) -> 4 x (Linear he, ReLU), width 8d -> Linear, tanh -> (B, 3, 64, 64)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        w = 8 * dim
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
