"""Training data: every dataset becomes one uint8 tensor (N, 3, 64, 64) plus a content
fingerprint, and batches are drawn in an order that is a pure function of (seed, epoch).

Datasets (a registry keyed by name; ``--data`` picks one):

* ``demo``: procedurally generated 64x64 RGB images, deterministic, no download. Eight
  visually distinct modes (discs, squares, horizontal and vertical stripes, checkerboards,
  rings, gradients, triangles) in equal numbers, so mode collapse is visible in a sample grid.
* a prepared cache (``python -m reproduce prepare-data``; see prepare.py): the official LSUN
  LMDB or any folder of images, preprocessed once to 64x64 (SPEC.md E.2), memory-mapped and
  verified against its manifest before use. Raw LMDBs and folders are refused with the
  prepare-data command to run.

The fingerprint (a hash of the final uint8 bytes) is part of every run id: a run can never
silently resume on different data.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config.runtime import BUILTIN_DATA
from ..errors import UserError, did_you_mean
from . import imagecache, prepare
from .imagecache import RESOLUTION
from .unpickle import load_cifar_batch

PLACEMENTS = ("auto", "device", "host")


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
    kind: str  # demo | shapes | cache
    images: Tensor | CachedImages  # (N, 3, 64, 64) uint8: a CPU tensor, or a memory map
    fingerprint: str
    info: dict[str, Any] = field(default_factory=dict)  # source, counts, preprocessing

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------
DEMO_SIZE = 2048  # images; 8 modes x 256
DEMO_SEED = 20170331  # fixed: the demo set is one dataset, independent of the run seed
DEMO_MODES = ("disc", "square", "hstripes", "vstripes", "checker", "ring", "gradient", "triangle")


@dataclass(frozen=True)
class DemoStyle:
    """The nuisance variation of a procedural set: the eight modes are the same in every style.

    ``demo`` varies everything (colours over the whole RGB cube, position, size, pixel noise);
    ``shapes`` keeps the modes and drops most of the rest (white on black, shapes near the
    centre and large, no noise), so that a small GAN learns it in CPU minutes."""

    colour: bool  # random fg/bg colour pairs (else white on black)
    centre: tuple[float, float]  # range of a shape's centre coordinates, pixels
    scale: float  # the low end of every size range moves this far towards its high end
    noise: int  # uniform integer pixel noise in [-noise, noise]


DEMO_STYLES = {
    "demo": DemoStyle(colour=True, centre=(18, 46), scale=0.0, noise=10),
    "shapes": DemoStyle(colour=False, centre=(27, 37), scale=0.5, noise=0),
}


def make_demo_images(n: int = DEMO_SIZE, seed: int = DEMO_SEED, style: str = "demo") -> Tensor:
    """(n, 3, 64, 64) uint8; image i shows mode i % 8 with random geometry and colours, varied
    as ``DEMO_STYLES[style]`` says (``demo``'s draws are the original generator's, bit for
    bit)."""
    st = DEMO_STYLES[style]
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

        def size(lo: float, hi: float) -> np.ndarray:
            return u(lo + st.scale * (hi - lo), hi)

        fg = rng.uniform(0, 255, size=(k, 1, 1, 3)).astype(np.float32)
        # background: every channel shifted by 88..168 (mod 256), so the shape always stands out
        bg = (fg + rng.uniform(88, 168, size=(k, 1, 1, 3)).astype(np.float32)) % 256.0
        if not st.colour:
            fg, bg = np.full_like(fg, 255.0), np.zeros_like(bg)
        cx, cy = u(*st.centre), u(*st.centre)
        if mode == "disc":
            mask = (x - cx) ** 2 + (y - cy) ** 2 < size(8, 18) ** 2
        elif mode == "square":
            s = size(7, 16)
            mask = (np.abs(x - cx) < s) & (np.abs(y - cy) < s)
        elif mode in ("hstripes", "vstripes"):
            coord = y if mode == "hstripes" else x
            half = size(3, 8)
            mask = np.floor((coord + u(0, 16)) / half) % 2 == 0
        elif mode == "checker":
            half = size(4, 9)
            mask = (np.floor((x + u(0, 16)) / half) + np.floor((y + u(0, 16)) / half)) % 2 == 0
        elif mode == "ring":
            d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
            outer = size(10, 18)
            mask = (d < outer) & (d > outer - size(3, 6))
        elif mode == "gradient":
            theta = u(0, 2 * math.pi)
            t = ((x - 32) * np.cos(theta) + (y - 32) * np.sin(theta)) / 45.0 + 0.5
            t = np.clip(t, 0, 1)[..., None]
            img = bg * (1 - t) + fg * t
            mask = None
        elif mode == "triangle":
            s = size(9, 17)
            top = cy - s
            mask = (y >= top) & (y <= cy + s) & (np.abs(x - cx) <= (y - top) / 2)
        else:  # pragma: no cover - DEMO_MODES and this chain are edited together
            raise AssertionError(mode)
        if mask is not None:
            img = np.where(mask[..., None], fg, bg)
        # mild texture: uniform integer noise (cheap to draw for 25M pixels)
        noisy = np.rint(img).astype(np.int16)
        if st.noise:
            noisy += rng.integers(-st.noise, st.noise + 1, size=img.shape, dtype=np.int16)
        out[idx] = np.clip(noisy, 0, 255).astype(np.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


DEMO_VAL_SIZE = 512  # the held-out split: other images of the same eight modes


@functools.lru_cache(maxsize=4)
def load_demo(split: str = "train", style: str = "demo") -> ImageDataset:
    """A procedural set, ``demo`` or ``shapes`` (cached per process; the images tensor is never
    modified). The ``val`` split is drawn with another seed: same modes, other images
    (held-out curves, Figure 5a)."""
    n, seed = (DEMO_SIZE, DEMO_SEED) if split == "train" else (DEMO_VAL_SIZE, DEMO_SEED + 1)
    images = make_demo_images(n, seed, style)
    fp = fingerprint(style, images)
    info = {"source": style, "split": split, "n": n, "modes": list(DEMO_MODES), "seed": seed}
    return ImageDataset(style, images, fp, info)


# --------------------------------------------------------------------------------------------
# prepared caches (python -m reproduce prepare-data)
# --------------------------------------------------------------------------------------------
class CachedImages:
    """The rows of a prepared cache's ``images.npy`` that form one split, memory-mapped.

    Indexing with a LongTensor of split positions returns those images as a uint8 tensor
    (a gather from the page cache; nothing else is read). ``gather_into`` writes them into a
    preallocated (pinned) buffer instead."""

    def __init__(self, path: Path, rows: np.ndarray) -> None:
        self.path = path
        self.array = np.load(path / imagecache.IMAGES, mmap_mode="r")
        self.rows = rows.astype(np.int64)
        self.shape = (len(self.rows), 3, RESOLUTION, RESOLUTION)
        self.nbytes = len(self.rows) * prepare.ROW_BYTES

    def __len__(self) -> int:
        return len(self.rows)

    # mode="clip" (unbuffered, fast): imagecache.verify has proven every split index in range
    def __getitem__(self, idx: Tensor) -> Tensor:
        rows = self.rows[idx.numpy()]
        return torch.from_numpy(np.take(self.array, rows, axis=0, mode="clip"))

    def gather_into(self, idx: Tensor, out: Tensor) -> Tensor:
        np.take(self.array, self.rows[idx.numpy()], axis=0, mode="clip", out=out.numpy())
        return out

    def materialize(self, device: torch.device, chunk: int = 8192) -> Tensor:
        """All images of the split as one uint8 tensor on ``device``."""
        out = torch.empty(self.shape, dtype=torch.uint8, device=device)
        for i in range(0, len(self), chunk):
            block = torch.from_numpy(np.take(self.array, self.rows[i : i + chunk], axis=0))
            out[i : i + len(block)].copy_(block)
        return out


_verified: set[tuple[str, str, int, int] | None] = set()  # caches verified in this process


def load_cache(path: Path, split: str = "train") -> ImageDataset:
    """A prepared cache; verified against its manifest (once per process and file state)."""
    manifest = imagecache.read_manifest(path)
    try:
        st = os.stat(path / imagecache.IMAGES)
        key = (str(path.resolve()), manifest["fingerprint"], st.st_mtime_ns, st.st_size)
    except OSError:
        key = None  # missing: verify() raises, naming the file
    if key is None or key not in _verified:
        imagecache.verify(path, manifest)
        _verified.add(key)
    rows = imagecache.load_splits(path)[split]
    images = CachedImages(path, rows)
    info = {
        "source": manifest["source"],
        "cache": str(path.resolve()),
        "split": split,
        "n": len(images),
        "count": manifest["count"],
        "skipped": manifest["skipped"],
        "preprocessing": manifest["preprocessing"],
        "cache_fingerprint": manifest["fingerprint"],
    }
    fp = manifest["fingerprint"] if split == "train" else f"{manifest['fingerprint']}-{split}"
    return ImageDataset("cache", images, fp, info)


def _prepare_hint(path: Path) -> str:
    return (
        f"prepare it once first: python -m reproduce prepare-data --source {path} "
        f"--out {path.with_name(path.name + '-64')}"
    )


def load_path(spec: str, split: str = "train") -> ImageDataset:
    path = Path(spec)
    if not path.exists():
        hint = did_you_mean(spec, BUILTIN)
        raise UserError(
            f"--data: {spec!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor an "
            f"existing path{hint}"
        )
    if path.is_file() and path.name == "data.mdb":
        path = path.parent
    if prepare.is_cache(path):
        return load_cache(path, split)
    if is_cifar(path):
        return load_cifar(path.resolve(), split)
    if prepare.is_lmdb(path):
        raise UserError(
            f"--data: {path} is a raw LMDB, not a prepared cache; {_prepare_hint(path)}"
        )
    if path.is_dir() and any(
        p.suffix.lower() in prepare.IMAGE_EXTENSIONS
        for p in itertools.islice(path.rglob("*"), 10_000)
    ):
        raise UserError(
            f"--data: {path} is a folder of raw images, not a prepared cache; {_prepare_hint(path)}"
        )
    raise UserError(
        f"--data: {path} is neither 'demo' nor a prepared cache (python -m reproduce "
        "prepare-data makes one from an LSUN LMDB or a folder of images)"
    )


BUILTIN = BUILTIN_DATA  # dataset names; anything else given to --data is a path
assert set(BUILTIN) == set(DEMO_STYLES)
SPLITS = ("train", "val")


def load_dataset(spec: str, split: str = "train") -> ImageDataset:
    """A built-in dataset name, a prepared cache or the CIFAR-10 python archive. Raises
    UserError for anything unusable."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    if spec in BUILTIN:
        return load_demo(split, spec)
    return load_path(spec, split)


def load_split_if_any(spec: str, split: str) -> ImageDataset | None:
    """The split (e.g. a held-out ``val``) when the dataset has one with at least one image."""
    try:
        ds = load_dataset(spec, split)
    except (UserError, KeyError, OSError, ValueError):
        return None
    return ds if len(ds) else None


def heldout_split(spec: str, wanted: bool | None) -> ImageDataset | None:
    """The split a run records its held-out critic loss on (Figure 5a): the data's ``val``
    split unless ``wanted`` is False (--no-heldout); None when there is none."""
    return load_split_if_any(spec, "val") if wanted is not False else None


def scale_images(x: Tensor) -> Tensor:
    """uint8 -> float in [-1, 1] as the authors' code: 2 (x/255 - 0.5). Returns a new tensor."""
    return x.float().div_(255.0).sub_(0.5).mul_(2.0)


# --------------------------------------------------------------------------------------------
# CIFAR-10 (Figure 3): the standard python archive, read from where the user keeps it
# --------------------------------------------------------------------------------------------
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


def is_cifar(path: Path) -> bool:
    if path.is_dir():
        return (path / CIFAR_TEST).is_file() or (path / CIFAR_DIR / CIFAR_TEST).is_file()
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


@functools.lru_cache(maxsize=4)
def load_cifar(path: Path, split: str = "train") -> ImageDataset:
    """``cifar-10-python.tar.gz`` (or its extracted ``cifar-10-batches-py``): the five
    training batches (50,000 images) as ``train``, the test batch as ``val``; uint8
    (N, 3, 32, 32) in the archive's order (rows are R, G, B planes of 32x32)."""
    import pickle
    import tarfile

    names = CIFAR_TRAIN if split == "train" else (CIFAR_TEST,)
    blobs: dict[str, bytes] = {}
    try:
        if path.is_dir():
            root = path / CIFAR_DIR if (path / CIFAR_DIR).is_dir() else path
            for n in names:
                blobs[n] = (root / n).read_bytes()
        else:
            with tarfile.open(path) as tar:
                for n in names:
                    member = tar.extractfile(f"{CIFAR_DIR}/{n}")
                    if member is None:
                        raise KeyError(n)
                    blobs[n] = member.read()
        arrays = []
        for n in names:
            batch = load_cifar_batch(blobs[n])
            if not isinstance(batch, dict):
                raise ValueError(f"{n}: a {type(batch).__name__}, not a dict")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(f"{n}: data of shape {data.shape}, expected (N, 3072)")
            arrays.append(data.reshape(-1, 3, 32, 32))
    except (OSError, KeyError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            EOFError, pickle.UnpicklingError, tarfile.TarError) as e:  # fmt: skip
        raise UserError(
            f"--data: {path} is not a readable CIFAR-10 python archive ({type(e).__name__}: {e})"
        ) from None
    images = torch.from_numpy(np.concatenate(arrays))
    info = {"source": str(path), "split": split, "n": len(images), "format": "cifar-10-python"}
    return ImageDataset("cifar10", images, fingerprint("cifar10", images), info)


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

    def next_slice(self) -> tuple[int, int]:
        """Advance by one batch; returns (epoch, start) of its indices in that epoch's order."""
        pos = self.position
        if pos.offset + self.batch_size > self.n:
            pos.epoch, pos.offset = pos.epoch + 1, 0
        start = pos.offset
        pos.offset += self.batch_size
        return pos.epoch, start

    def next_indices(self) -> Tensor:
        epoch, start = self.next_slice()
        return self.permutation(epoch)[start : start + self.batch_size]

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.next_indices()


def resolve_placement(
    placement: str, dataset: ImageDataset, device: torch.device, share: int = 1
) -> str:
    """``device``: the uint8 images resident on the training device (on a CPU device: in RAM);
    ``host``: gathered per batch on the host (from the memory map for a cache) and copied
    through pinned buffers. ``auto``: device when the images take at most 60% of the device
    memory this run may count on (CUDA), host otherwise; on a CPU device, device when they
    already are in RAM. A run that shares its GPU with others (``share`` runs in all: cells
    packed ``share`` per GPU, which start at about the same moment and each see the whole
    GPU free) counts on 1/share of its total memory, and never on more than is free now."""
    if placement not in PLACEMENTS:
        raise ValueError(placement)
    if placement != "auto":
        return placement
    nbytes = len(dataset) * prepare.ROW_BYTES
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return "device" if nbytes <= 0.6 * min(free, total / share) else "host"
    return "device" if isinstance(dataset.images, Tensor) else "host"


class BatchSource:
    """Real batches on the training device, scaled like the authors' code: 2 (x/255 - 0.5).

    With placement ``device`` the uint8 images are held on the device once (12 KiB per 64x64
    image), and so is each epoch's order, so a batch is one slice and one gather. With
    ``host`` a batch is gathered on the host into one of two pinned buffers and copied
    without blocking; an event per buffer keeps a buffer from being refilled while its copy
    is in flight. Both placements deliver identical batches, so a run may resume under the
    other.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        seed: int,
        device: torch.device,
        position: DataPosition | None = None,
        placement: str = "auto",
        share: int = 1,
    ) -> None:
        self.sampler = EpochSampler(len(dataset), batch_size, seed, position)
        self.device = device
        self.placement = resolve_placement(placement, dataset, device, share)
        self.share = share
        self.host = dataset.images
        if self.placement == "device":
            self._device_epoch = -1
            self._device_perm = torch.empty(0, dtype=torch.long)
            if isinstance(dataset.images, Tensor):
                self.images = dataset.images.to(device)
            else:
                self.images = dataset.images.materialize(device)
        else:
            cuda = device.type == "cuda"
            shape = (batch_size, *dataset.images.shape[1:])
            self._buffers = [
                torch.empty(shape, dtype=torch.uint8, pin_memory=cuda)
                for _ in range(2 if cuda else 1)
            ]
            self._events: list[Any] = [None] * len(self._buffers)
            self._slot = 0

    @property
    def position(self) -> DataPosition:
        return self.sampler.position

    def next_uint8(self) -> Tensor:
        if self.placement == "device":
            # the epoch's order goes to the device once per epoch; a batch is then a slice
            # and a gather on the device, with no host-to-device transfer in the hot loop
            epoch, start = self.sampler.next_slice()
            if epoch != self._device_epoch:
                self._device_perm = self.sampler.permutation(epoch).to(self.device)
                self._device_epoch = epoch
            idx = self._device_perm[start : start + self.sampler.batch_size]
            return self.images.index_select(0, idx)
        idx = self.sampler.next_indices()
        k = self._slot
        self._slot = (k + 1) % len(self._buffers)
        if self._events[k] is not None:
            self._events[k].synchronize()  # its previous copy has finished
        buf = self._buffers[k]
        if isinstance(self.host, Tensor):
            torch.index_select(self.host, 0, idx, out=buf)
        else:
            self.host.gather_into(idx, buf)
        if self.device.type != "cuda":
            return buf
        x = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[k] = event
        return x

    def next(self) -> Tensor:
        return scale_images(self.next_uint8())  # a new tensor, never the buffer itself
