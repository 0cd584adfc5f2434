"""Row 7: 101-layer ResNet generator and critic (``ResnetGenerator`` / ``ResnetDiscriminator``
with ``BottleneckResidualBlock`` of gan_64x64.py, SPEC.md A.7).

33 bottleneck blocks x 3 convs + input and output layers = 101 layers per network.
Default tflib init (he for the block convs, glorot for the shortcuts and in/out layers).
Not the "Good" ResNet at the authors' HEAD, which is not one of the seven.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import (
    Conv2d,
    Deconv2d,
    Linear,
    Norm,
    Padding,
    depth_to_space_tf,
    mirror,
    mirror_layers,
    norm2d,
)

Z_DIM = 128
RESIDUAL_SCALE = 0.3  # out = shortcut + 0.3 * branch (the authors' constant)
OUTPUT_SCALE = 5.0  # G: tanh(x / 5); D: linear output / 5

Resample = Literal["none", "down", "up"]


class SubpixelShortcut(nn.Module):
    """tflib SubpixelConv2D: 1x1 conv Cin -> 4 Cout, then TF depth-to-space x2."""

    mirrored = False  # compute in the mirrored frame (layers.mirror_layers)

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = Conv2d(cin, 4 * cout, 1, he_init=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.mirrored:
            return depth_to_space_tf(self.conv(x), 2)
        # mirrored, pixel (i, j) of each 2x2 block is pixel (1 - i, 1 - j) of the unmirrored
        # block: the four channel groups that depth-to-space reads in reverse order, i.e. the
        # 1x1 conv's output channels (four groups) reversed
        w = self.conv.weight
        weight = w.view(4, -1, *w.shape[1:]).flip(0).reshape(w.shape)
        bias = self.conv.bias
        assert bias is not None
        return depth_to_space_tf(F.conv2d(x, weight, bias.view(4, -1).flip(0).reshape(-1)), 2)


class BottleneckBlock(nn.Module):
    """out = shortcut(x) + 0.3 * Norm(Conv2(ReLU(Conv1B(ReLU(Conv1(ReLU(x))))))).

    Conv1 1x1 in -> in/2; Conv1B 3x3 in/2 -> out/2 (stride 2 for "down", deconv x2 for "up");
    Conv2 1x1 -> out without bias. Shortcut: identity (none), 1x1 stride-2 conv (down), or
    subpixel 1x1 conv (up); glorot init with bias.
    """

    def __init__(
        self, cin: int, cout: int, resample: Resample, *, norm: Norm, padding: Padding
    ) -> None:
        super().__init__()
        if resample == "none":
            if cin != cout:
                raise ValueError("a 'none' block must keep its width (identity shortcut)")
            self.shortcut: nn.Module = nn.Identity()
            conv1b: nn.Module = Conv2d(cin // 2, cout // 2, 3, padding=padding)
        elif resample == "down":
            self.shortcut = Conv2d(cin, cout, 1, 2, he_init=False, padding=padding)
            conv1b = Conv2d(cin // 2, cout // 2, 3, 2, padding=padding)
        elif resample == "up":
            self.shortcut = SubpixelShortcut(cin, cout)
            conv1b = Deconv2d(cin // 2, cout // 2, 3, padding=padding)
        else:
            raise ValueError(f"unknown resample {resample!r}")
        self.branch = nn.Sequential(
            nn.ReLU(),
            Conv2d(cin, cin // 2, 1),
            nn.ReLU(),
            conv1b,
            nn.ReLU(),
            Conv2d(cout // 2, cout, 1, bias=False),
            norm2d(norm, cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + RESIDUAL_SCALE * self.branch(x)


def _stage(
    width_in: int, width_out: int, resample: Resample, n_same: int, norm: Norm, padding: Padding
) -> list[nn.Module]:
    """One resampling block followed by ``n_same`` width-preserving blocks."""
    blocks: list[nn.Module] = [
        BottleneckBlock(width_in, width_out, resample, norm=norm, padding=padding)
    ]
    blocks += [
        BottleneckBlock(width_out, width_out, "none", norm=norm, padding=padding)
        for _ in range(n_same)
    ]
    return blocks


class ResNetGenerator(nn.Module):
    """z -> Linear -> (B, 8d, 4, 4) -> 6 blocks -> [Up, 6] x 3 -> Up to d/2, 5 blocks (64x64)
    -> 1x1 conv -> 3, tanh(x / 5). Generator norms are always batch norm."""

    def __init__(self, dim: int = 64, *, padding: Padding = "tf-same") -> None:
        super().__init__()
        d = dim
        self.dim = dim
        self.input = Linear(Z_DIM, 4 * 4 * 8 * d)
        n: Norm = "batch"
        blocks: list[nn.Module] = [
            BottleneckBlock(8 * d, 8 * d, "none", norm=n, padding=padding) for _ in range(6)
        ]
        blocks += _stage(8 * d, 4 * d, "up", 6, n, padding)  # (B, 4d, 8, 8)
        blocks += _stage(4 * d, 2 * d, "up", 6, n, padding)  # (B, 2d, 16, 16)
        blocks += _stage(2 * d, d, "up", 6, n, padding)  # (B, d, 32, 32)
        blocks += _stage(d, d // 2, "up", 5, n, padding)  # (B, d/2, 64, 64)
        self.blocks = nn.Sequential(*blocks)
        self.output = Conv2d(d // 2, 3, 1, he_init=False)
        self.mirrored = mirror_layers(self.blocks, padding)

    def forward(self, z: Tensor) -> Tensor:
        x = self.input(z).view(-1, 8 * self.dim, 4, 4)
        if self.mirrored:  # the 1x1 output conv and tanh are indifferent to the frame
            return mirror((self.output(self.blocks(mirror(x))) / OUTPUT_SCALE).tanh())
        return (self.output(self.blocks(x)) / OUTPUT_SCALE).tanh()


class ResNetCritic(nn.Module):
    """image -> 1x1 conv 3 -> d/2 -> 5 blocks (64x64) -> [Down, 6] x 4 -> (B, 8d, 4, 4)
    -> Linear -> (B,), divided by 5."""

    def __init__(self, dim: int = 64, *, norm: Norm, padding: Padding = "tf-same") -> None:
        super().__init__()
        d = dim
        self.input = Conv2d(3, d // 2, 1, he_init=False)
        blocks: list[nn.Module] = [
            BottleneckBlock(d // 2, d // 2, "none", norm=norm, padding=padding) for _ in range(5)
        ]
        blocks += _stage(d // 2, d, "down", 6, norm, padding)  # (B, d, 32, 32)
        blocks += _stage(d, 2 * d, "down", 6, norm, padding)  # (B, 2d, 16, 16)
        blocks += _stage(2 * d, 4 * d, "down", 6, norm, padding)  # (B, 4d, 8, 8)
        blocks += _stage(4 * d, 8 * d, "down", 6, norm, padding)  # (B, 8d, 4, 4)
        self.blocks = nn.Sequential(*blocks)
        self.output = Linear(4 * 4 * 8 * d, 1)
        self.mirrored = mirror_layers(self.blocks, padding)

    def forward(self, x: Tensor) -> Tensor:
        if self.mirrored:  # the 1x1 input conv is indifferent to the frame
            x = mirror(self.blocks(self.input(mirror(x))))
        else:
            x = self.blocks(self.input(x))
        return (self.output(x.flatten(1)) / OUTPUT_SCALE).view(-1)
