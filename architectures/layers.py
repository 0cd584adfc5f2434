"""Building blocks that reproduce the authors' tflib layers exactly (SPEC.md A.0).

Three things differ from PyTorch defaults and are reproduced here:

* **TF "SAME" padding.** For a stride-2 convolution TF pads the extra pixel at the bottom/right;
  a transposed convolution is the exact adjoint of that, so its output is cropped at the same
  offsets. ``padding="symmetric"`` selects the common PyTorch approximation instead (a one-pixel
  shift, SPEC.md E.5), as a named departure. Inside the networks, TF-SAME costs no more than
  symmetric padding: they compute in the mirrored frame (``mirror_layers``).
* **tflib initialisation.** Every random initialiser is *uniform* on [-sqrt(3) s, sqrt(3) s]
  with s from the fan-in/fan-out formulas of SPEC.md A.0; biases start at 0. The DCGAN
  generator/critic functions override s with 0.02 (still uniform).
* **Normalisation.** Batch norm always uses batch statistics (no running averages, also when
  sampling); layer norm is ``GroupNorm(1, C)`` (per-sample statistics over C,H,W, per-channel
  gamma/beta).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .choices import NORMS, PADDINGS, Norm, Padding

# sqrt(3): a uniform distribution on [-sqrt(3) s, sqrt(3) s] has standard deviation s.
_SQRT3 = math.sqrt(3.0)


def tflib_uniform_(tensor: Tensor, std: float) -> Tensor:
    """tflib's ``uniform(stdev, size)``: U(-sqrt(3) std, +sqrt(3) std), in place."""
    bound = _SQRT3 * std
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def linear_std(fan_in: int, fan_out: int, init: Literal["glorot", "he"]) -> float:
    """Standard deviation of tflib ``Linear`` initialisers (SPEC.md A.0)."""
    if init == "glorot":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    raise ValueError(f"unknown linear init {init!r}")


def conv_std(cin: int, cout: int, k: int, stride: int, he_init: bool) -> float:
    """tflib ``Conv2D``: fan_in = Cin k^2, fan_out = Cout k^2 / stride^2."""
    fan_in = cin * k * k
    fan_out = cout * k * k / (stride * stride)
    return math.sqrt((4.0 if he_init else 2.0) / (fan_in + fan_out))


def deconv_std(cin: int, cout: int, k: int, he_init: bool) -> float:
    """tflib ``Deconv2D`` (always stride 2): fan_in = Cin k^2 / 4, fan_out = Cout k^2."""
    fan_in = cin * k * k / 4.0
    fan_out = cout * k * k
    return math.sqrt((4.0 if he_init else 2.0) / (fan_in + fan_out))


def mirror(x: Tensor) -> Tensor:
    """Reverse both spatial axes (the mirrored frame of ``mirror_layers``)."""
    return x.flip(-2, -1)


def mirror_layers(net: nn.Module, padding: Padding) -> bool:
    """Make every TF-SAME layer of ``net`` compute in the mirrored frame; True if it did.

    Mirrored (both spatial axes reversed), TF's padding of the extra pixel at the bottom/right
    becomes padding at the top/left, and with a mirrored kernel, a TF-SAME layer is exactly a
    layer with PyTorch's symmetric padding: ``mirror(tf_same(x)) == layer(mirror(x))`` with the
    layer's symmetric padding set to TF's padding after the input (the unread extra row at the
    end costs nothing). So a network that mirrors its image input (critic) or its first
    feature map (generator) once, and its last spatial output back once, computes TF-SAME
    with no padded copy of any activation and no cropped transposed-convolution output: the
    same speed as symmetric padding (measured in the README's "Speed": the explicit pads and
    crops made a generator iteration up to 23% slower on the CPU). Normalisation layers and
    pointwise or per-channel operations are indifferent to the frame. The same products are
    summed, in the backend's order, which can differ in the last bit from the padded form's.
    """
    if padding != "tf-same":
        return False
    for m in net.modules():
        if hasattr(m, "mirrored"):
            setattr(m, "mirrored", True)  # noqa: B010 - any module with the flag
    return True


def _same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF SAME padding (before, after) along one spatial axis."""
    out = -(-size // stride)  # ceil
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


class Linear(nn.Linear):
    """tflib ``Linear``: uniform init (glorot by default, 'he' on request, or a fixed std)."""

    def __init__(
        self,
        fan_in: int,
        fan_out: int,
        init: Literal["glorot", "he"] = "glorot",
        weights_std: float | None = None,
    ) -> None:
        super().__init__(fan_in, fan_out, bias=True)
        std = weights_std if weights_std is not None else linear_std(fan_in, fan_out, init)
        tflib_uniform_(self.weight, std)
        nn.init.zeros_(self.bias)


class Conv2d(nn.Conv2d):
    """tflib ``Conv2D`` with TF SAME padding (or the symmetric approximation).

    Input (B, Cin, H, W) -> output (B, Cout, ceil(H/stride), ceil(W/stride)).
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        stride: int = 1,
        *,
        he_init: bool = True,
        bias: bool = True,
        weights_std: float | None = None,
        padding: Padding = "tf-same",
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        # Symmetric: PyTorch's usual p=(k-1)//2. TF-SAME: explicit asymmetric F.pad in forward
        # (for stride 1 and odd k the two coincide, so no extra op is issued).
        self.same = padding == "tf-same" and stride > 1
        super().__init__(cin, cout, k, stride, padding=0 if self.same else (k - 1) // 2, bias=bias)
        std = weights_std if weights_std is not None else conv_std(cin, cout, k, stride, he_init)
        tflib_uniform_(self.weight, std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    mirrored = False  # compute in the mirrored frame (set by mirror_layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.mirrored:
            return self._mirrored(x)
        if self.same:
            k, s = self.kernel_size[0], self.stride[0]
            top, bottom = _same_pads(x.shape[-2], k, s)
            left, right = _same_pads(x.shape[-1], k, s)
            if top or bottom or left or right:
                x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)

    def _mirrored(self, x: Tensor) -> Tensor:
        """``mirror(self(mirror(x)))`` without the mirrors: the mirrored kernel, with TF's
        padding after the input taken before it (or, where TF leaves input rows unread at the
        end, e.g. k=1 stride 2, those rows skipped at the start)."""
        k, s = self.kernel_size[0], self.stride[0]
        w = self.weight if k == 1 else self.weight.flip(-2, -1)
        if not self.same:  # stride 1, odd k: symmetric already
            return F.conv2d(x, w, self.bias, s, self.padding)
        h = x.shape[-2]
        assert x.shape[-1] == h, "TF-SAME layers here take square inputs"
        out = -(-h // s)
        before, _ = _same_pads(h, k, s)
        start = h - s * (out - 1) + before - k  # first row read, in the mirrored frame
        if start > 0:
            y = F.conv2d(x[..., start:, start:], w, self.bias, s)
        else:
            y = F.conv2d(x, w, self.bias, s, -start)
        assert y.shape[-1] == out, (y.shape, out)
        return y


class Deconv2d(nn.ConvTranspose2d):
    """tflib ``Deconv2D``: stride-2 transposed convolution, (B, Cin, H, W) -> (B, Cout, 2H, 2W).

    TF-SAME: the adjoint of a SAME stride-2 convolution on a 2H input, i.e. the full transposed
    convolution (size 2H + k - 2) cropped at the forward convolution's top/left padding
    (k=5: keep [1:1+2H]; k=3: keep [0:2H]). Symmetric: ``padding=(k-1)//2, output_padding=1``.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        k: int,
        *,
        he_init: bool = True,
        weights_std: float | None = None,
        padding: Padding = "tf-same",
    ) -> None:
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.same = padding == "tf-same"
        if self.same:
            super().__init__(cin, cout, k, stride=2, padding=0, bias=True)
        else:
            super().__init__(cin, cout, k, stride=2, padding=(k - 1) // 2, output_padding=1)
        std = weights_std if weights_std is not None else deconv_std(cin, cout, k, he_init)
        tflib_uniform_(self.weight, std)
        assert self.bias is not None
        nn.init.zeros_(self.bias)

    mirrored = False  # compute in the mirrored frame (set by mirror_layers)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if self.mirrored:
            # mirror(self(mirror(x))) without the mirrors: the mirrored kernel, and the full
            # output's crop mirrored (TF crops `top` before and `after` after it)
            top, after = _same_pads(2 * x.shape[-2], self.kernel_size[0], 2)
            kernel = self.weight.flip(-2, -1)
            return F.conv_transpose2d(x, kernel, self.bias, 2, after, after - top)
        y = super().forward(x)
        if self.same:
            h, w = 2 * x.shape[-2], 2 * x.shape[-1]
            top, _ = _same_pads(h, self.kernel_size[0], 2)
            left, _ = _same_pads(w, self.kernel_size[1], 2)
            y = y[:, :, top : top + h, left : left + w]
        return y


def norm2d(kind: Norm, channels: int) -> nn.Module:
    """A normalisation slot for (B, C, H, W) activations.

    batch: batch statistics always (``track_running_stats=False``), eps 1e-5, gamma 1, beta 0.
    layer: tflib Layernorm over (C, H, W) with per-channel gamma/beta == GroupNorm(1, C).
    none:  identity (keeps layer indices aligned; has no parameters).
    """
    if kind == "batch":
        return nn.BatchNorm2d(channels, eps=1e-5, affine=True, track_running_stats=False)
    if kind == "layer":
        return nn.GroupNorm(1, channels, eps=1e-5, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def gated(x: Tensor) -> Tensor:
    """PixelCNN gated unit on interleaved channels: sigmoid(x[:, 0::2]) * tanh(x[:, 1::2]).

    (B, 2C, ...) -> (B, C, ...). Interleaved (even/odd), not first half/second half.
    """
    return torch.sigmoid(x[:, 0::2]) * torch.tanh(x[:, 1::2])


class Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return gated(x)


def depth_to_space_tf(x: Tensor, block: int = 2) -> Tensor:
    """TF ``depth_to_space`` in NCHW terms: (B, b*b*C, H, W) -> (B, C, bH, bW).

    TF reads channel (i*b + j)*C + c into pixel (bh + i, bw + j) of channel c; PyTorch's
    PixelShuffle reads channel c*b*b + i*b + j. After a learned 1x1 conv the two differ only by
    a permutation of that conv's output channels, but we keep TF's order so ported weights
    would load unchanged.
    """
    b, c4, h, w = x.shape
    c = c4 // (block * block)
    x = x.view(b, block, block, c, h, w)  # (B, i, j, C, H, W)
    x = x.permute(0, 3, 4, 1, 5, 2)  # (B, C, H, i, W, j)
    return x.reshape(b, c, h * block, w * block)


def activation(name: Literal["relu", "lrelu", "tanh"]) -> nn.Module:
    """The nonlinearities of SPEC.md A.0 (LeakyReLU slope 0.2)."""
    if name == "relu":
        return nn.ReLU()
    if name == "lrelu":
        return nn.LeakyReLU(0.2)
    if name == "tanh":
        return nn.Tanh()
    raise ValueError(f"unknown activation {name!r}")
