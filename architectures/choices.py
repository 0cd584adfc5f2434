"""The networks' named choices, without torch: padding, critic normalisation and the MLP
generator's width (SPEC.md A.0, E.5, E.19b). The registry (``architectures/__init__.py``), the
options and ``--help`` read them without importing the networks."""

from __future__ import annotations

from typing import Literal

Padding = Literal["tf-same", "symmetric"]
Norm = Literal["batch", "layer", "none"]
PADDINGS: tuple[Padding, ...] = ("tf-same", "symmetric")
NORMS: tuple[Norm, ...] = ("batch", "layer", "none")

# Width of the MLP generator (row 3), a named choice recorded in every MLP run's config:
#   scaled     8 * dim (the default): the width option scales this generator with every other
#              network, so a small-width run keeps the paper's balance between G and D;
#   fixed-512  the authors' code: FC_DIM = 512 whatever DIM is.
# Both are 512 at the paper's DIM 64, so the paper's network is the same either way.
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
