"""Small LSUN-style sources for the tests: a real LMDB in the official layout (keys are
40-hex image ids, values the encoded images, mostly WebP) and image folders."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np
from PIL import Image

PATTERN_KEY = b"0" * 39 + b"p"  # sorts first among the valid keys (ids are hex)
GRAY_KEY = b"0" * 39 + b"g"


def pattern_image() -> Image.Image:
    """256 wide x 128 high: left quarter red, right quarter blue, a green band in the middle
    column 124..131. After resizing to 128x64 and the centre crop (columns 32..95), the band
    lands on columns 30..33 and the red and blue quarters are cut off."""
    img = np.zeros((128, 256, 3), dtype=np.uint8)
    img[:, :64] = (255, 0, 0)
    img[:, 192:] = (0, 0, 255)
    img[:, 124:132] = (0, 255, 0)
    return Image.fromarray(img)


def encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    kwargs = {"lossless": True} if fmt == "WEBP" else {"quality": 90} if fmt == "JPEG" else {}
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


@dataclass
class LsunSource:
    path: Path
    keys: list[bytes]  # sorted, as LMDB keeps them
    corrupt: set[bytes] = field(default_factory=set)
    small: set[bytes] = field(default_factory=set)

    @property
    def usable(self) -> int:
        return len(self.keys) - len(self.corrupt) - len(self.small)


def make_lmdb(
    path: Path, n: int = 240, corrupt: int = 3, small: int = 0, seed: int = 0
) -> LsunSource:
    """``n`` images of varied sizes and aspect ratios (every 10th JPEG, every 25th PNG, the
    rest WebP), plus the pattern image, a grayscale JPEG, ``corrupt`` undecodable values and
    ``small`` images under 64 px on the short side."""
    rng = np.random.default_rng(seed)
    items: dict[bytes, bytes] = {}
    for i in range(n):
        w, h = int(rng.integers(64, 220)), int(rng.integers(64, 220))
        # smooth random colour fields (noise would make WebP large and slow)
        base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)
        fmt = "JPEG" if i % 10 == 0 else "PNG" if i % 25 == 1 else "WEBP"
        items[rng.bytes(20).hex().encode()] = encode(im, fmt)
    items[PATTERN_KEY] = encode(pattern_image(), "WEBP")
    items[GRAY_KEY] = encode(Image.new("L", (96, 80), 77), "JPEG")
    bad = set()
    for _ in range(corrupt):
        key = rng.bytes(20).hex().encode()
        items[key] = b"RIFF\x00\x00\x00\x00WEBPVP8 truncated"
        bad.add(key)
    tiny = set()
    for _ in range(small):
        key = rng.bytes(20).hex().encode()
        items[key] = encode(Image.new("RGB", (48, 100), (9, 9, 9)), "WEBP")
        tiny.add(key)
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=64 << 20, subdir=True)
    with env.begin(write=True) as txn:
        for k, v in items.items():
            txn.put(k, v)
    env.close()
    return LsunSource(path, sorted(items), bad, tiny)


def make_folder(path: Path, sizes: list[tuple[int, int]], corrupt: int = 0) -> Path:
    path.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i % 256, 0, 0)).save(path / f"img{i:03d}.png")
    for i in range(corrupt):
        (path / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    return path
