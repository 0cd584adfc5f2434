"""Generator output -> uint8 pixels and 8x8 sample grids, as the authors' code does it."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from ..fileio import atomic_write_bytes


def to_uint8(x: Tensor) -> Tensor:
    """[-1, 1] floats -> uint8 as ``((x + 1) * (255.99 / 2)).astype(int)`` (truncation), the
    authors' conversion for sample grids and Inception scores (SPEC.md B.5 and D)."""
    return ((x.float() + 1.0) * (255.99 / 2)).clamp_(0, 255).to(torch.uint8)


def grid(images: Tensor, nrow: int = 8) -> Tensor:
    """(N, 3, H, W) uint8 -> (3, rows*H, nrow*W) uint8, no padding (as tflib's save_images)."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    out = torch.zeros((c, rows * h, nrow * w), dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[:, r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i]
    return out


def save_png(image: Tensor, path: Path) -> None:
    """(3, H, W) uint8 -> PNG file, written atomically."""
    buf = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
