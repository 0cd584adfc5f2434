"""The demo judge: a small CNN that knows the demo data's eight modes, so that quality and
mode coverage are measurable on any machine, offline, without the Inception weights.

The judge is trained on *freshly generated* demo images (seed ``JUDGE_SEED``: neither the
training split the GANs see nor the ``val`` split it is tested on), deterministically (fixed
seed, one thread), in well under a minute on one CPU core. It is cached with its sha256 and
the fingerprints of the demo set it was built for; it is rebuilt when either no longer
matches (a corrupted file, a changed demo generator, a changed recipe). Nothing is ever
downloaded.

It plugs into torch-fidelity as a registered feature extractor (``demo-judge``): its logits
over the 8 modes play the role of Inception's logits for the Inception-score analogue
(10 splits, as for IS), and its penultimate features the role of the 2048-d pool features for
a Fréchet distance and KID. All three run through torch-fidelity's own metric code, exactly as
the Inception path does (``metrics.inception_metrics`` with ``feature_extractor=NAME``).

Two further numbers, the ones the mode-collapse literature reports for labelled toy data
(Metz et al. 2017, Srivastava et al. 2017, Lin et al. 2018), come from the same logits:

* **confident fraction**: the share of samples whose top class probability is at least
  ``CONFIDENCE`` (0.9): samples the judge recognises as one mode;
* **modes covered**: the modes that receive at least ``MODE_SHARE`` (10%) of a uniform share
  of the samples, i.e. at least 0.1 * N / 8 confident samples each. The share threshold keeps
  a handful of stray samples from counting as a mode.

Both thresholds are recorded in every evaluation row (``judge_thresholds``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.datasets import DEMO_MODES, DEMO_SEED, load_demo, make_demo_images
from ..envvars import user_cache
from ..errors import UserError
from ..fileio import atomic_write_bytes, atomic_write_json, finite, read_json, read_regular
from .metrics import file_lock

NAME = "demo-judge"  # torch-fidelity feature-extractor name
RECIPE = 3  # bump when the network or its training changes: the cache key changes with it
MAX_JUDGE_BYTES = 64 << 20  # the judge file is well under 1 MB
JUDGE_SEED = DEMO_SEED + 2  # the judge's own images: train is DEMO_SEED, val DEMO_SEED + 1
JUDGE_IMAGES = 4096  # 512 per mode
EPOCHS = 8
BATCH = 64
LR = 4e-3
JUNK_SHARE = 8  # a step sees BATCH demo images and BATCH // JUNK_SHARE junk images
FEATURES = 128  # width of the feature layer (Fréchet distance, KID)
CONFIDENCE = 0.9  # a sample is confident when its top class probability reaches this
MODE_SHARE = 0.1  # a mode is covered with >= MODE_SHARE * N / 8 confident samples
ENV_DIR = "REPRODUCE_JUDGE_DIR"  # where the judge is cached (default: the user cache)


@dataclass(frozen=True)
class JudgeThresholds:
    confidence: float = CONFIDENCE
    mode_share: float = MODE_SHARE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class JudgeNet(nn.Module):
    """uint8 (N, 3, 64, 64) -> (features (N, 128), logits (N, 8)). Per-image normalised input,
    four stride-2 3x3 convolutions with ReLU, the last 4x4 map and its spatial maximum, one
    hidden layer (the features), a linear classifier. No batch-dependent layers: a sample's
    numbers never depend on its batch."""

    def __init__(self, n_classes: int = len(DEMO_MODES), features: int = FEATURES) -> None:
        super().__init__()
        chans = (3, 16, 32, 64, 128)
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in itertools.pairwise(chans)
        )
        self.hidden = nn.Linear(chans[-1] * (4 * 4 + 1), features)
        self.head = nn.Linear(features, n_classes)
        # set once after training: the features of the judge's images get unit RMS, so that
        # Fréchet distances and KID's cubic kernel (x.y / d + 1)^3 have Inception-like scales
        self.feature_scale: Tensor
        self.register_buffer("feature_scale", torch.ones(()))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.float()
        # per image and channel: zero mean, unit variance. The modes' colours are random; their
        # shapes are what tells them apart. The floor (16 grey levels, above the data's pixel
        # noise) keeps a near-flat image near zero instead of blowing its faint texture up
        h = (h - h.mean(dim=(2, 3), keepdim=True)) / (h.std(dim=(2, 3), keepdim=True) + 16.0)
        for conv in self.convs:
            h = F.relu(conv(h))
        # where things are (the 4x4 map) and what is anywhere (its spatial maximum)
        feats = F.relu(self.hidden(torch.cat([h.flatten(1), h.amax(dim=(2, 3))], dim=1)))
        return feats * self.feature_scale, self.head(feats)


# --------------------------------------------------------------------------------------------
# building and caching
# --------------------------------------------------------------------------------------------
def labels(n: int) -> Tensor:
    """Image i of a demo set shows mode i % 8 (data.make_demo_images)."""
    return torch.arange(n) % len(DEMO_MODES)


@contextlib.contextmanager
def _deterministic(threads: int = 1) -> Iterator[None]:
    """One thread and a fixed global seed for the build; the caller's state is restored."""
    old_threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.set_rng_state(rng)


@torch.no_grad()
def predict(net: JudgeNet, images: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    outs = [net(images[i : i + batch]) for i in range(0, len(images), batch)]
    return torch.cat([f for f, _ in outs]), torch.cat([lg for _, lg in outs])


def accuracy(net: JudgeNet, images: Tensor) -> float:
    return float((predict(net, images)[1].argmax(1) == labels(len(images))).float().mean())


def _plain_junk(n: int, seed: int) -> Tensor:
    """(n, 3, 64, 64) uint8 images of no mode: the whole junk of recipe 2. Half are smooth
    colour blobs (random 2x2, 4x4 or 8x8 colour grids, bilinearly upsampled); a quarter are
    faint blobs (contrast 4 to 40 grey levels around a random grey: the near-flat output of
    some freshly initialised generators); a quarter are fine noise (independent pixels or 2x2
    blocks, 10 to 120 grey levels: the output of others). All get the demo data's pixel
    noise."""
    g = torch.Generator().manual_seed(seed)
    blobs = []
    for i, s in enumerate((2, 4, 8)):
        k = n // 3 + (1 if i < n % 3 else 0)
        coarse = torch.rand(k, 3, s, s, generator=g) * 255
        blobs.append(F.interpolate(coarse, size=64, mode="bilinear", align_corners=False))
    images = torch.cat(blobs)[torch.randperm(n, generator=g)]
    faint, fine = n // 4, n // 4
    level = torch.rand(faint + fine, 1, 1, 1, generator=g) * 200 + 28
    contrast = torch.rand(faint, 1, 1, 1, generator=g) * 36 + 4
    images[:faint] = level[:faint] + (images[:faint] / 255 - 0.5) * contrast
    noise = torch.rand(fine, 3, 64, 64, generator=g) - 0.5
    blocky = torch.rand(fine, generator=g) < 0.5
    noise[blocky] = noise[blocky][:, :, ::2, ::2].repeat_interleave(2, 2).repeat_interleave(2, 3)
    amplitude = torch.rand(fine, 1, 1, 1, generator=g) * 110 + 10
    images[faint : faint + fine] = level[faint:] + noise * amplitude
    noisy = images + torch.randint(-10, 11, (n, 3, 64, 64), generator=g)
    return noisy.round().clamp(0, 255).to(torch.uint8)


def conv_textures(n: int, seed: int) -> Tensor:
    """(n, 3, 64, 64) uint8 outputs of random, untrained transposed-convolution stacks: a 4x4
    noise map through four stride-2 transposed convolutions with random Gaussian kernels of
    even size (4 or 6, so with their checkerboard artefacts), ReLU or tanh between them,
    rescaled to a contrast of 3 to 38 grey levels (standard deviation) around a random colour.
    The fine periodic textures of a freshly initialised convolutional generator look like
    this; without them the judge took many samples of a freshly initialised baseline
    generator for confident ``hstripes`` (``tests/test_judge.py``). Drawn in batches of 64
    that share a width and kernels, as a generator's samples share its weights."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, 64):
        k = min(64, n - start)
        c = int(torch.randint(4, 33, (1,), generator=g))
        h = torch.randn(k, c, 4, 4, generator=g)
        for layer in range(4):
            c_out = 3 if layer == 3 else c
            size = 2 * int(torch.randint(2, 4, (1,), generator=g))
            w = torch.randn(c, c_out, size, size, generator=g) / (c * size * size / 4) ** 0.5
            h = F.conv_transpose2d(h, w, stride=2, padding=(size - 2) // 2)
            if layer < 3:
                h = F.relu(h) if torch.rand((), generator=g) < 0.5 else torch.tanh(h)
        h = h - h.mean(dim=(1, 2, 3), keepdim=True)
        h = h / (h.std(dim=(1, 2, 3), keepdim=True) + 1e-8)
        level = torch.rand(k, 3, 1, 1, generator=g) * 200 + 28
        contrast = torch.rand(k, 1, 1, 1, generator=g) * 35 + 3
        out.append(level + h * contrast)
    noisy = torch.cat(out) + torch.randint(-10, 11, (n, 3, 64, 64), generator=g)
    return noisy.round().clamp(0, 255).to(torch.uint8)


def make_junk(n: int, seed: int) -> Tensor:
    """(n, 3, 64, 64) uint8 images of no mode, like what an untrained or failing generator
    makes: two thirds blobs and noise (``_plain_junk``), one third the textures of untrained
    transposed convolutions (``conv_textures``)."""
    k = n // 3
    return torch.cat([_plain_junk(n - k, seed), conv_textures(k, seed + 1)])


def train_judge(seed: int = JUDGE_SEED) -> tuple[JudgeNet, dict[str, Any]]:
    """Train the judge from scratch on fresh demo images; deterministic on one thread.

    Outlier exposure (Hendrycks et al. 2019): each step also sees a few images of no mode
    (``make_junk``) with a uniform target, so that the judge is unsure of what is not a demo
    image. Without it, the blurry blobs of an untrained generator were classified with
    confidence (83% "confident" samples) and counted as modes. The junk set is 1,536 images
    (recipe 2: 1,024, without ``conv_textures``)."""
    t0 = time.perf_counter()
    with _deterministic():
        images = make_demo_images(JUDGE_IMAGES, seed)
        y = labels(JUDGE_IMAGES)
        junk = make_junk(JUDGE_IMAGES * 3 // 8, seed + 10)
        torch.manual_seed(seed)
        net = JudgeNet()
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        steps = EPOCHS * (JUDGE_IMAGES // BATCH)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps)
        g = torch.Generator().manual_seed(seed)
        nj = BATCH // JUNK_SHARE
        for _ in range(EPOCHS):
            order = torch.randperm(JUDGE_IMAGES, generator=g)
            jorder = torch.randperm(len(junk), generator=g)
            for step, i in enumerate(range(0, JUDGE_IMAGES - BATCH + 1, BATCH)):
                idx = order[i : i + BATCH]
                jdx = jorder[(step * nj) % len(junk) :][:nj]
                logits = net(torch.cat([images[idx], junk[jdx]]))[1]
                loss = F.cross_entropy(logits[:BATCH], y[idx])
                loss = loss - F.log_softmax(logits[BATCH:], dim=1).mean()  # towards uniform
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        net.eval()
        feats = predict(net, images)[0]
        net.feature_scale.fill_(float(feats.pow(2).mean().rsqrt()))
        val = load_demo("val").images
        assert isinstance(val, Tensor)
        info = {
            "val_accuracy": accuracy(net, val),
            "train_accuracy": accuracy(net, images),
            "build_seconds": time.perf_counter() - t0,
        }
    return net, info


def cache_dir() -> Path:
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    return user_cache("judge")


def demo_fingerprints() -> dict[str, str]:
    """What the judge is built for: the demo generator's output (train and val splits)."""
    return {"train": load_demo("train").fingerprint, "val": load_demo("val").fingerprint}


@dataclass(frozen=True)
class Judge:
    """A verified judge file: ``path`` holds the state dict, ``sha256`` its checksum."""

    path: str
    sha256: str
    val_accuracy: float
    demo_fingerprint: str
    thresholds: JudgeThresholds = JudgeThresholds()

    @property
    def name(self) -> str:
        return NAME

    def provenance(self) -> dict[str, Any]:
        return {
            "judge": NAME,
            "judge_sha256": self.sha256,
            "judge_recipe": RECIPE,
            "judge_val_accuracy": self.val_accuracy,
            "judge_thresholds": self.thresholds.to_dict(),
        }

    def load(self, device: torch.device | str = "cpu") -> JudgeNet:
        return load_net(Path(self.path), device)


def load_net(path: Path, device: torch.device | str = "cpu") -> JudgeNet:
    net = JudgeNet()
    state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    net.load_state_dict(state)
    return net.eval().to(device)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _paths(root: Path) -> tuple[Path, Path]:
    stem = f"{NAME}-r{RECIPE}"
    return root / f"{stem}.pt", root / f"{stem}.json"


def _cached(root: Path, fps: dict[str, str]) -> tuple[Judge | None, str]:
    """The cached judge if its record matches this demo set and its file its checksum;
    otherwise None and why."""
    pt, record = _paths(root)
    try:  # regular files, bounded: a FIFO, a link to /dev/zero or junk is not a judge
        rec = read_json(record, max_bytes=1 << 20)
        data = read_regular(pt, MAX_JUDGE_BYTES)
    except FileNotFoundError:
        return None, "none cached yet"
    except (OSError, ValueError) as e:
        return None, f"its files are unreadable ({e})"
    if not isinstance(rec, dict):
        return None, f"{record} is not a judge's record"
    if rec.get("demo_fingerprints") != fps:
        return None, "the demo data changed"
    if sha256_bytes(data) != rec.get("sha256"):
        return None, f"{pt} does not match its recorded sha256 (corrupt)"
    try:
        load_net(pt)
    except Exception as e:  # a file that passes its checksum but does not load: rebuild
        return None, f"{pt} does not load ({type(e).__name__})"
    accuracy = finite(rec.get("val_accuracy"))
    if accuracy is None or not isinstance(rec.get("sha256"), str):
        return None, f"{record} is not a judge's record"
    return Judge(str(pt), rec["sha256"], accuracy, fps["train"]), "cached"


def is_cached() -> bool:
    """Whether a usable judge for this demo set is cached (no build needed)."""
    return _cached(cache_dir(), demo_fingerprints())[0] is not None


def resolve_judge(log: Any = None) -> tuple[Judge, str]:
    """The demo judge, built if needed: (judge, "cached" | "built (why)"). Concurrent callers
    (cells starting together) build it once: the build holds a file lock. A cache folder
    that cannot hold it (a file, /proc, read-only, its lock a folder) is a UserError naming
    where it is set."""
    root = cache_dir()
    try:
        return _resolve(root, log)
    except OSError as e:
        where = f"${ENV_DIR}" if os.environ.get(ENV_DIR) else "the user cache"
        raise UserError(
            f"{where}: cannot keep the demo judge in {root} ({e.strerror or e}); set "
            f"{ENV_DIR} to a writable folder"
        ) from None


def _resolve(root: Path, log: Any) -> tuple[Judge, str]:
    fps = demo_fingerprints()
    judge, why = _cached(root, fps)
    if judge is not None:
        return judge, why
    with file_lock(root / ".lock"):
        judge, why = _cached(root, fps)  # another process may have built it meanwhile
        if judge is not None:
            return judge, why
        if log is not None:
            log(f"building the demo judge ({why}; under a minute on one core)")
        net, info = train_judge()
        buf = io.BytesIO()
        torch.save(net.state_dict(), buf)
        data = buf.getvalue()
        pt, record = _paths(root)
        atomic_write_bytes(pt, data)
        atomic_write_json(
            record,
            {
                "name": NAME,
                "recipe": RECIPE,
                "sha256": sha256_bytes(data),
                "demo_fingerprints": fps,
                "judge_seed": JUDGE_SEED,
                "torch": torch.__version__,
                **info,
            },
        )
        return Judge(str(pt), sha256_bytes(data), info["val_accuracy"], fps["train"]), (
            f"built in {info['build_seconds']:.1f} s ({why}), val accuracy "
            f"{100 * info['val_accuracy']:.2f}%"
        )


# --------------------------------------------------------------------------------------------
# mode statistics
# --------------------------------------------------------------------------------------------
def mode_stats(logits: Tensor, thresholds: JudgeThresholds) -> dict[str, Any]:
    """Confident fraction, modes covered and the per-mode counts of confident samples."""
    p = logits.float().softmax(dim=1)
    top, cls = p.max(dim=1)
    confident = top >= thresholds.confidence
    counts = torch.bincount(cls[confident], minlength=logits.shape[1])
    need = thresholds.mode_share * len(logits) / logits.shape[1]
    return {
        "modes_covered": int((counts >= need).sum()),
        "modes_total": int(logits.shape[1]),
        "confident_fraction": float(confident.float().mean()),
        "mode_counts": [int(c) for c in counts],
    }


# --------------------------------------------------------------------------------------------
# torch-fidelity feature extractor
# --------------------------------------------------------------------------------------------
def register() -> None:
    """Register ``demo-judge`` with torch-fidelity (idempotent)."""
    import torch_fidelity
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if NAME in FEATURE_EXTRACTORS_REGISTRY:
        return

    class DemoJudgeExtractor(FeatureExtractorBase):
        """torch-fidelity's view of the judge: features ``features`` (64-d, for FID/KID) and
        ``logits`` (8 modes, for the Inception-score analogue)."""

        def __init__(
            self,
            name: str,
            features_list: list[str],
            feature_extractor_weights_path: str | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(name, features_list)
            if feature_extractor_weights_path is None:
                raise ValueError(f"{NAME} needs feature_extractor_weights_path")
            self.net = load_net(Path(feature_extractor_weights_path))
            for p in self.net.parameters():
                p.requires_grad_(False)

        @staticmethod
        def get_provided_features_list() -> tuple[str, ...]:
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric: str) -> str:
            return {"isc": "logits", "fid": "features", "kid": "features"}.get(metric, "features")

        @staticmethod
        def can_be_compiled() -> bool:
            return False

        @staticmethod
        def get_dummy_input_for_compile() -> Tensor:
            return torch.zeros(1, 3, 64, 64, dtype=torch.uint8)

        def forward(self, x: Tensor) -> tuple[Tensor, ...]:
            feats, logits = self.net(x)
            out = {"features": feats, "logits": logits}
            return tuple(out[f] for f in self.get_requested_features_list())

    torch_fidelity.register_feature_extractor(NAME, DemoJudgeExtractor)
