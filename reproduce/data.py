"""Training data: every dataset becomes one uint8 tensor (N, 3, 64, 64) plus a content
fingerprint, and batches are drawn in an order that is a pure function of (seed, epoch).

Datasets (a registry keyed by name; ``--data`` picks one):

* ``demo``: procedurally generated 64x64 RGB images, deterministic, no download. Eight
  visually distinct modes (discs, squares, horizontal and vertical stripes, checkerboards,
  rings, gradients, triangles) in equal numbers, so mode collapse is visible in a sample grid.
* ``folder``: any folder of images (recursive), each resized so its shorter side is 64 px
  (antialiased bicubic) and centre-cropped to 64x64 (SPEC.md E.2), converted to RGB.

The fingerprint (a hash of the final uint8 bytes) is part of every run id: a run can never
silently resume on different data.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .errors import UserError

RESOLUTION = 64
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
# An image folder may contain a few unusable files (unreadable, or smaller than 64 px on the
# short side); they are skipped and counted. Above this fraction the folder is rejected.
MAX_SKIPPED_FRACTION = 0.01
RESIZE = "PIL bicubic (antialiased), shorter side to 64, centre crop 64x64"


def derive_seed(seed: int, *labels: object) -> int:
    """An independent 63-bit seed for a named stream derived from the run seed."""
    h = hashlib.sha256(":".join(map(str, (seed, *labels))).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def fingerprint(kind: str, images: Tensor) -> str:
    """``<kind>-<sha256 of shape and bytes, 16 hex>``."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    h.update(np.ascontiguousarray(images.numpy()).data)
    return f"{kind}-{h.hexdigest()[:16]}"


@dataclass
class ImageDataset:
    kind: str  # registry name: demo | folder
    images: Tensor  # (N, 3, 64, 64) uint8, CPU
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)  # source, counts, preprocessing

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------
DEMO_SIZE = 2048  # images; 8 modes x 256
DEMO_SEED = 20170331  # fixed: the demo set is one dataset, independent of the run seed
DEMO_MODES = ("disc", "square", "hstripes", "vstripes", "checker", "ring", "gradient", "triangle")


def make_demo_images(n: int = DEMO_SIZE, seed: int = DEMO_SEED) -> Tensor:
    """(n, 3, 64, 64) uint8; image i shows mode i % 8 with random geometry and colours."""
    rng = np.random.default_rng(seed)
    r = RESOLUTION
    y, x = np.mgrid[0:r, 0:r].astype(np.float32)  # (64, 64) each
    y, x = y[None], x[None]  # broadcast over images
    out = np.empty((n, r, r, 3), dtype=np.uint8)
    modes = np.arange(n) % len(DEMO_MODES)
    for m, mode in enumerate(DEMO_MODES):
        idx = np.flatnonzero(modes == m)
        k = idx.size
        if k == 0:
            continue

        def u(lo: float, hi: float, k: int = k) -> np.ndarray:
            return rng.uniform(lo, hi, size=(k, 1, 1)).astype(np.float32)

        fg = rng.uniform(0, 255, size=(k, 1, 1, 3)).astype(np.float32)
        # background: every channel shifted by 88..168 (mod 256), so the shape always stands out
        bg = (fg + rng.uniform(88, 168, size=(k, 1, 1, 3)).astype(np.float32)) % 256.0
        cx, cy = u(18, 46), u(18, 46)
        if mode == "disc":
            mask = (x - cx) ** 2 + (y - cy) ** 2 < u(8, 18) ** 2
        elif mode == "square":
            s = u(7, 16)
            mask = (np.abs(x - cx) < s) & (np.abs(y - cy) < s)
        elif mode in ("hstripes", "vstripes"):
            coord = y if mode == "hstripes" else x
            half = u(3, 8)
            mask = np.floor((coord + u(0, 16)) / half) % 2 == 0
        elif mode == "checker":
            half = u(4, 9)
            mask = (np.floor((x + u(0, 16)) / half) + np.floor((y + u(0, 16)) / half)) % 2 == 0
        elif mode == "ring":
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            outer = u(10, 18)
            mask = (d < outer) & (d > outer - u(3, 6))
        elif mode == "gradient":
            theta = u(0, 2 * math.pi)
            t = ((x - 32) * np.cos(theta) + (y - 32) * np.sin(theta)) / 45.0 + 0.5
            t = np.clip(t, 0, 1)[..., None]
            img = bg * (1 - t) + fg * t
            mask = None
        elif mode == "triangle":
            s = u(9, 17)
            top = cy - s
            mask = (y >= top) & (y <= cy + s) & (np.abs(x - cx) <= (y - top) / 2)
        else:  # pragma: no cover - DEMO_MODES and this chain are edited together
            raise AssertionError(mode)
        if mask is not None:
            img = np.where(mask[..., None], fg, bg)
        # mild texture: uniform integer noise in [-10, 10] (cheap to draw for 25M pixels)
        noisy = np.rint(img).astype(np.int16) + rng.integers(
            -10, 11, size=img.shape, dtype=np.int16
        )
        out[idx] = np.clip(noisy, 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@functools.lru_cache(maxsize=1)
def load_demo() -> ImageDataset:
    """The demo set (cached per process; the images tensor is never modified)."""
    images = make_demo_images()
    return ImageDataset(
        "demo",
        images,
        fingerprint("demo", images),
        {"source": "demo", "n": len(images), "modes": list(DEMO_MODES), "seed": DEMO_SEED},
    )


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------
class SkippedImage(Exception):
    """An image that cannot be used; ``reason`` is 'unreadable' or 'too-small'."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def preprocess(data: bytes | Path) -> np.ndarray:
    """Encoded image (bytes or a path) -> (3, 64, 64) uint8 RGB (SPEC.md E.2).

    Grayscale, palette and RGBA images are converted to RGB (alpha dropped), not rejected.
    Raises SkippedImage for unreadable files and for images under 64 px on the short side.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as raw:
            raw.load()
            im: Image.Image = raw.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise SkippedImage("unreadable") from None
    w, h = im.size
    if min(w, h) < RESOLUTION:
        raise SkippedImage("too-small")
    scale = RESOLUTION / min(w, h)
    nw, nh = max(RESOLUTION, round(w * scale)), max(RESOLUTION, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - RESOLUTION) // 2, (nh - RESOLUTION) // 2
    im = im.crop((left, top, left + RESOLUTION, top + RESOLUTION))
    return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()


def list_images(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def load_folder(path: str) -> ImageDataset:
    root = Path(path)
    if not root.exists():
        close = difflib.get_close_matches(path, [k for k in DATASETS if k != "folder"], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"--data: {path!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an "
            f"existing path{hint}"
        )
    if not root.is_dir():
        raise UserError(f"--data: {root} is neither 'demo' nor a folder of images")
    try:
        files = list_images(root)
    except OSError as e:
        raise UserError(f"--data: cannot read {root}: {e.strerror}") from None
    if not files:
        raise UserError(
            f"--data: {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)"
        )
    arrays, skipped = [], {"unreadable": 0, "too-small": 0}
    for f in files:
        try:
            arrays.append(preprocess(f))
        except SkippedImage as s:
            skipped[s.reason] += 1
    n_skipped = sum(skipped.values())
    if not arrays or n_skipped > MAX_SKIPPED_FRACTION * len(files):
        raise UserError(
            f"--data: {n_skipped} of {len(files)} images in {root} are unusable "
            f"({skipped['unreadable']} unreadable, {skipped['too-small']} under 64 px on the "
            f"short side); at most {MAX_SKIPPED_FRACTION:.0%} may be skipped"
        )
    images = torch.from_numpy(np.stack(arrays))
    return ImageDataset(
        "folder",
        images,
        fingerprint("folder", images),
        {
            "source": str(root.resolve()),
            "n": len(arrays),
            "files": len(files),
            "skipped": skipped,
            "preprocessing": RESIZE,
        },
    )


DATASETS: dict[str, Callable[[str], ImageDataset]] = {
    "demo": lambda spec: load_demo(),
    "folder": load_folder,
}


BUILTIN = ("demo",)  # dataset names; anything else given to --data is a path


def load_dataset(spec: str) -> ImageDataset:
    """A built-in dataset name or a path. Raises UserError for anything unusable."""
    kind = spec if spec in BUILTIN else "folder"
    return DATASETS[kind](spec)


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
@dataclass
class DataPosition:
    epoch: int = 0
    offset: int = 0  # index into this epoch's permutation of the next batch's first image

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}


class EpochSampler:
    """Batches of indices without replacement; each epoch's order is ``randperm(N)`` seeded by
    (seed, epoch) alone, so any position (epoch, offset) can be restored exactly. The last
    incomplete batch of an epoch is dropped (every batch has exactly ``batch_size`` images)."""

    def __init__(self, n: int, batch_size: int, seed: int, position: DataPosition | None = None):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} exceeds dataset size {n}")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.position = position or DataPosition()
        self._epoch_cached = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch_cached:
            g = torch.Generator().manual_seed(derive_seed(self.seed, "data-order", epoch))
            self._perm = torch.randperm(self.n, generator=g)
            self._epoch_cached = epoch
        return self._perm

    def next_indices(self) -> Tensor:
        pos = self.position
        if pos.offset + self.batch_size > self.n:
            pos.epoch, pos.offset = pos.epoch + 1, 0
        idx = self.permutation(pos.epoch)[pos.offset : pos.offset + self.batch_size]
        pos.offset += self.batch_size
        return idx

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.next_indices()


class BatchSource:
    """Real batches on the training device, scaled like the authors' code: 2 (x/255 - 0.5).

    The uint8 images are held on the device once (64x64 uint8 costs 12 KiB per image), so a
    batch is one index transfer and one gather.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int,
        device: torch.device,
        position: DataPosition | None = None,
    ) -> None:
        self.sampler = EpochSampler(len(dataset), batch_size, seed, position)
        self.device = device
        self.images = dataset.images.to(device)

    @property
    def position(self) -> DataPosition:
        return self.sampler.position

    def next(self) -> Tensor:
        idx = self.sampler.next_indices().to(self.device, non_blocking=True)
        x = self.images.index_select(0, idx).float()  # (B, 3, 64, 64)
        return x.div_(255.0).sub_(0.5).mul_(2.0)
