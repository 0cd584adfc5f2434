"""The seven generator/critic pairs of the paper's LSUN experiment (Figure 2, SPEC.md A.1-A.7).

One registry of *pairs*: a generator and its critic are registered together, so there is no
second table to keep in sync. The registry imports no torch: each factory imports its
network's module when it is first called, so the command line lists and checks names fast.
Each entry has a stable short name (used in run ids and on the command line), the paper's row
number and row title, and two factories:

    pair.generator(dim, padding)       -> nn.Module, z (B, 128) -> image (B, 3, 64, 64)
                                          (row 3 also takes ``mlp_width``: SPEC.md E.19b)
    pair.critic(dim, norm, padding)    -> nn.Module, image (B, 3, 64, 64) -> (B,)

``norm`` is explicit: the procedure decides it (layer norm only in WGAN-GP critics, SPEC.md
A.0 and paper section 5.2) and passes it in; no network looks at a global mode. Pairs without
normalisation slots in the critic (row 4) say so with ``critic_has_norm=False`` and their
factory refuses anything but ``"none"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reproduce.registry import Registry

from .choices import MLP_WIDTHS, NORMS, PADDINGS, MLPWidth, Norm, Padding

if TYPE_CHECKING:
    from torch import nn

Z_DIM = 128  # latent size of every generator (SPEC.md A.0)
IMAGE_SHAPE = (3, 64, 64)

__all__ = [
    "ALL_PAIRS",
    "IMAGE_SHAPE",
    "MLP_WIDTHS",
    "NORMS",
    "PADDINGS",
    "PAIRS",
    "Z_DIM",
    "ArchitecturePair",
    "MLPWidth",
    "Norm",
    "Padding",
    "get_pair",
]


@dataclass(frozen=True)
class ArchitecturePair:
    name: str  # stable short name, used in run ids and on the command line
    row: int  # row of Figure 2 / Appendix H (1..7)
    title: str  # the paper's row title
    spec: str  # SPEC.md section
    make_generator: Callable[..., nn.Module]  # (dim, padding[, mlp_width]) -> generator
    make_critic: Callable[[int, Norm, Padding], nn.Module]
    critic_has_norm: bool = True  # False: the critic has no normalisation slots (row 4)
    resolution: int = 64  # images are (3, resolution, resolution)
    # the critic's norm under the gradient penalty ("layer": SPEC.md A.0; CIFAR: "none")
    penalty_norm: Norm = "layer"
    has_mlp_width: bool = False  # True: the generator is an MLP whose width is a choice (row 3)

    def generator(
        self, dim: int = 64, padding: Padding = "tf-same", mlp_width: MLPWidth | None = None
    ) -> nn.Module:
        if not self.has_mlp_width:
            if mlp_width is not None:
                raise ValueError(f"architecture {self.name!r} has no MLP generator width")
            return self.make_generator(dim, padding)
        return self.make_generator(dim, padding, mlp_width or "scaled")

    def critic(
        self, dim: int = 64, norm: Norm = "batch", padding: Padding = "tf-same"
    ) -> nn.Module:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not self.critic_has_norm and norm != "none":
            raise ValueError(f"architecture {self.name!r} has no critic normalisation slots")
        return self.make_critic(dim, norm, padding)


def _net(module: str, cls: str) -> Callable[..., nn.Module]:
    """The network class ``cls`` of ``architectures.<module>``, imported on the first call."""

    def build(*args: Any, **kwargs: Any) -> nn.Module:
        net: nn.Module = getattr(importlib.import_module(f"{__name__}.{module}"), cls)(
            *args, **kwargs
        )
        return net

    return build


PAIRS: Registry[ArchitecturePair] = Registry("architecture")  # the 7 LSUN rows, in order
ALL_PAIRS: Registry[ArchitecturePair] = Registry("architecture")  # and the others (CIFAR)


def register(pair: ArchitecturePair, *, lsun: bool = True) -> ArchitecturePair:
    """Add a pair to the registry, checking that its name and row are new."""
    if any(p.row == pair.row for p in ALL_PAIRS.values()):
        raise ValueError(f"paper row {pair.row} registered twice")
    ALL_PAIRS.register(pair.name, pair)
    if lsun:
        PAIRS.register(pair.name, pair)
    return pair


def get_pair(name: str) -> ArchitecturePair:
    """Look up a pair by name; an unknown name lists the valid ones and the closest match."""
    return ALL_PAIRS[name]


# fmt: off
register(ArchitecturePair(
    "baseline", 1, "Baseline (G: DCGAN, D: DCGAN)", "A.1",
    lambda dim, pad: _net("dcgan", "DCGANGenerator")(dim, padding=pad),
    lambda dim, norm, pad: _net("dcgan", "DCGANCritic")(dim, norm=norm, padding=pad),
))
register(ArchitecturePair(
    "constant-filters", 2, "G: No BN and a constant number of filters, D: DCGAN", "A.2",
    lambda dim, pad: _net("constant_filters", "ConstantFilterGenerator")(dim, padding=pad),
    lambda dim, norm, pad: _net("dcgan", "DCGANCritic")(dim, norm=norm, padding=pad),
))
register(ArchitecturePair(
    "mlp-generator", 3, "G: 4-layer 512-dim ReLU MLP, D: DCGAN", "A.3",
    lambda dim, pad, width: _net("mlp", "MLPGenerator")(dim, width),
    lambda dim, norm, pad: _net("dcgan", "DCGANCritic")(dim, norm=norm, padding=pad),
    has_mlp_width=True,
))
register(ArchitecturePair(
    "no-norm", 4, "No normalization in either G or D", "A.4",
    lambda dim, pad: _net("dcgan", "DCGANGenerator")(dim, bn=False, padding=pad),
    lambda dim, norm, pad: _net("dcgan", "DCGANCritic")(dim, norm="none", padding=pad),
    critic_has_norm=False,
))
register(ArchitecturePair(
    "gated", 5, "Gated multiplicative nonlinearities everywhere in G and D", "A.5",
    lambda dim, pad: _net("gated", "GatedGenerator")(dim, padding=pad),
    lambda dim, norm, pad: _net("gated", "GatedCritic")(dim, norm=norm, padding=pad),
))
register(ArchitecturePair(
    "tanh", 6, "tanh nonlinearities everywhere in G and D", "A.6",
    lambda dim, pad: _net("dcgan", "DCGANGenerator")(dim, nonlinearity="tanh", padding=pad),
    lambda dim, norm, pad: _net("dcgan", "DCGANCritic")(dim, norm=norm, nonlinearity="tanh",
                                                        padding=pad),
))
register(ArchitecturePair(
    "resnet101", 7, "101-layer ResNet G and D", "A.7",
    lambda dim, pad: _net("resnet101", "ResNetGenerator")(dim, padding=pad),
    lambda dim, norm, pad: _net("resnet101", "ResNetCritic")(dim, norm=norm, padding=pad),
))
register(ArchitecturePair(
    "cifar", 0, "CIFAR-10 DCGAN-like G and D (Figure 3)", "C.5",
    lambda dim, pad: _net("cifar", "CifarGenerator")(dim, padding=pad),
    lambda dim, norm, pad: _net("cifar", "CifarCritic")(dim, norm=norm, padding=pad),
    resolution=32, penalty_norm="none",
), lsun=False)
# fmt: on
