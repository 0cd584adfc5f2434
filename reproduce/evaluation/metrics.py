"""Inception score as the paper computed it, plus FID and KID, through torch-fidelity.

The paper's Inception score uses TF's ``inception-2015-12-05`` graph (SPEC.md D);
torch-fidelity's ``inception-v3-compat`` feature extractor reproduces it (TF1 bilinear resize
to 299, logits without the bias, 10 splits). Everything goes through one function,
``inception_metrics``, which wraps ``torch_fidelity.calculate_metrics`` and sets every option
explicitly; every result records those options, the torch-fidelity version and the sha256 of
the weights file.

Weights: the normal torch-fidelity download on machines with internet; ``fetch-weights``
stages the file on a login node; ``--inception-weights PATH`` or ``REPRODUCE_INCEPTION_WEIGHTS``
points at it. The file's checksum is fixed when it is staged (a ``.sha256`` file beside it)
and verified before training starts and again when each job starts. There is never a
fallback to another Inception network.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from architectures import Z_DIM

from .. import rng
from ..data.images import to_uint8
from ..errors import UserError
from ..fileio import atomic_write_bytes
from .fidelity_files import UnsafeFile, private_cache, safe_weights
from .keys import FID as FID  # the result keys, re-exported
from .keys import IS_MEAN as IS_MEAN
from .keys import IS_STD as IS_STD
from .keys import KID_MEAN as KID_MEAN
from .keys import KID_STD as KID_STD

FEATURE_EXTRACTOR = "inception-v3-compat"
# torch-fidelity's own URL and file name (torch.hub cache); a mirror may be given instead
WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
ENV_WEIGHTS = "REPRODUCE_INCEPTION_WEIGHTS"
ENV_URL = "REPRODUCE_INCEPTION_URL"
FETCH_HINT = (
    "on a machine with internet run `python -m reproduce fetch-weights --cache DIR`, then pass "
    f"--inception-weights DIR/{WEIGHTS_FILENAME} (or export {ENV_WEIGHTS}=...)"
)


def torch_fidelity_version() -> str:
    import torch_fidelity

    return str(torch_fidelity.__version__)


# --------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InceptionWeights:
    path: str
    sha256: str
    staged: bool  # the checksum came from a staging record (.sha256 beside the file)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_cache_dir() -> Path:
    """Where torch-fidelity's own download lands: the torch.hub checkpoint directory."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def check_structure(path: Path) -> None:
    """Load the file into torch-fidelity's exact InceptionV3: every key and shape must match."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    FeatureExtractorInceptionV3(
        FEATURE_EXTRACTOR, ["2048"], feature_extractor_weights_path=safe_weights(path)
    )


def verify_weights(path: Path, flag: str = "--inception-weights") -> InceptionWeights:
    """A staged file (``.sha256`` beside it, written only after it passed the structure check)
    is verified by its checksum; any other file by a strict load into the exact network.
    UserError if missing or corrupt, with the command that fixes it."""
    if not path.is_file():
        raise UserError(f"{flag}: Inception weights not found at {path}; {FETCH_HINT}")
    digest = sha256_file(path)
    if _sidecar(path).is_file():
        expected = _sidecar(path).read_text().split()[0]
        if expected != digest:
            raise UserError(
                f"{flag}: {path} is corrupt (sha256 {digest[:16]}..., staged as "
                f"{expected[:16]}...); {FETCH_HINT}"
            )
        try:  # a checksum beside a file says nothing of what it holds: tensors only
            safe_weights(path, digest)
        except (UnsafeFile, OSError) as e:
            raise UserError(f"{flag}: {e}; {FETCH_HINT}") from None
        return InceptionWeights(str(path.resolve()), digest, staged=True)
    _check_structure_or_fail(path, flag)
    return InceptionWeights(str(path.resolve()), digest, staged=False)


def _check_structure_or_fail(path: Path, flag: str) -> None:
    try:
        check_structure(path)
    except Exception as e:  # torch.load / load_state_dict errors of many kinds
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{flag}: {path} is not a valid Inception weights file ({msg}); {FETCH_HINT}"
        ) from None


def stage_weights(dest_dir: Path, url: str | None = None) -> InceptionWeights:
    """Download the weights into ``dest_dir``, check that they load into the exact network,
    move them into place atomically, and record their sha256 beside them."""
    url_given = url is not None
    url = url or os.environ.get(ENV_URL) or WEIGHTS_URL
    dest = dest_dir / WEIGHTS_FILENAME
    with tempfile.TemporaryDirectory() as scratch:  # nothing lands in dest_dir on failure
        downloaded = Path(scratch) / WEIGHTS_FILENAME
        torch.hub.download_url_to_file(url, str(downloaded), progress=False)
        source = ("--url" if url_given else f"${ENV_URL}" if os.environ.get(ENV_URL)
                  else "the release URL")  # fmt: skip
        _check_structure_or_fail(downloaded, source)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            shutil.copyfile(downloaded, tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    digest = sha256_file(dest)
    atomic_write_bytes(_sidecar(dest), f"{digest}  {dest.name}\n".encode())
    return InceptionWeights(str(dest.resolve()), digest, staged=True)


def resolve_weights(explicit: str | None, *, allow_download: bool) -> InceptionWeights:
    """The weights file to use: --inception-weights, then $REPRODUCE_INCEPTION_WEIGHTS, then
    torch-fidelity's cache, then (if allowed) torch-fidelity's normal download."""
    if explicit:
        return verify_weights(Path(explicit))
    if os.environ.get(ENV_WEIGHTS):
        return verify_weights(Path(os.environ[ENV_WEIGHTS]), flag=ENV_WEIGHTS)
    cached = default_cache_dir() / WEIGHTS_FILENAME
    if cached.is_file():
        return verify_weights(cached, flag="Inception weights cache")
    if not allow_download:
        raise UserError(f"Inception weights needed for evaluation but none given; {FETCH_HINT}")
    try:
        return stage_weights(default_cache_dir())
    except (OSError, ValueError, RuntimeError) as e:  # urllib errors are OSErrors
        raise UserError(
            f"Inception weights are not cached and cannot be downloaded ({type(e).__name__}: {e}); "
            + FETCH_HINT
        ) from None


# --------------------------------------------------------------------------------------------
# samples
# --------------------------------------------------------------------------------------------
class UInt8Images(Dataset):
    """(N, 3, H, W) uint8 tensor as a torch-fidelity input (it expects uint8 CHW tensors)."""

    def __init__(self, images: Tensor) -> None:
        assert images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


@torch.no_grad()
def generate_uint8(
    generator: nn.Module, n: int, batch_size: int, seed: int, device: torch.device
) -> Tensor:
    """(n, 3, 64, 64) uint8 samples in batches of the training batch size, so that batch-norm
    statistics are computed exactly as in training (SPEC.md D), from a dedicated noise stream."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        z = torch.randn(batch_size, Z_DIM, generator=g).to(device)
        out.append(to_uint8(generator(z)).cpu()[: n - start])
    return torch.cat(out)


class ImageRows(typing.Protocol):
    """uint8 images (N, 3, 64, 64) indexable by a LongTensor: a tensor or a cache's rows."""

    def __len__(self) -> int: ...
    def __getitem__(self, idx: Tensor) -> Tensor: ...


def reference_images(images: ImageRows, n: int, seed: int = 0) -> Tensor:
    """A fixed subset of the training images (all of them if there are at most ``n``)."""
    if len(images) <= n:
        return images[torch.arange(len(images))]
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=g)[:n].sort().values]


# --------------------------------------------------------------------------------------------
# the metrics function
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """Every option of one evaluation; recorded with its results."""

    num_samples: int = 50_000  # generated samples (50k and 10 splits as for Table 3)
    splits: int = 10
    shuffle: bool = False  # paper: splits in generation order (torch-fidelity's default: True)
    rng_seed: int = 2020  # torch-fidelity's seed for shuffling and KID subsets
    fid: bool = True
    kid: bool = True
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    reference_samples: int = 50_000  # training images for FID/KID (all if fewer)
    batch_size: int = 64  # Inception batch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialise the computation of one cached reference across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class Scorer(typing.Protocol):
    """A verified network file for torch-fidelity: the Inception weights or the demo judge."""

    @property
    def path(self) -> str: ...
    @property
    def sha256(self) -> str: ...


def inception_metrics(
    images: Tensor,
    weights: Scorer,
    protocol: Protocol,
    device: torch.device,
    *,
    feature_extractor: str = FEATURE_EXTRACTOR,
    reference: Tensor | None = None,
    reference_name: str | None = None,
    images_name: str | None = None,
    cache_root: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """IS (and FID/KID against ``reference``) of uint8 images (N, 3, H, W).

    ``feature_extractor``: a name registered with torch-fidelity, whose weights are
    ``weights.path`` (Inception's ``inception-v3-compat``, or the demo judge, judge.NAME).
    ``reference_name`` names the cached Inception features of the reference images (it must
    identify their content, e.g. the dataset fingerprint and subset size, and the weights);
    ``images_name`` likewise for ``images`` (None: never cached).
    """
    import torch_fidelity

    binary = reference is not None and (protocol.fid or protocol.kid)
    kwargs: dict[str, Any] = {
        "input1": UInt8Images(images),
        "isc": True,
        "fid": binary and protocol.fid,
        "kid": binary and protocol.kid,
        "feature_extractor": feature_extractor,
        # torch-fidelity unpickles the weights with weights_only=False: it gets our copy of
        # a tensors-only load of the verified bytes (fidelity_files.py); the demo judge's
        # own extractor loads its file with weights_only=True
        "feature_extractor_weights_path": (
            safe_weights(weights.path, weights.sha256)
            if feature_extractor == FEATURE_EXTRACTOR
            else weights.path
        ),
        "isc_splits": protocol.splits,
        "samples_shuffle": protocol.shuffle,
        "rng_seed": protocol.rng_seed,
        "batch_size": protocol.batch_size,
        "cuda": device.type == "cuda",
        "save_cpu_ram": True,  # no DataLoader worker processes for an in-memory tensor
        "verbose": False,
        "cache": cache_root is not None,
    }
    if cache_root is not None:
        kwargs["input1_cache_name"] = images_name
    if binary:
        assert reference is not None
        n_kid = min(protocol.kid_subset_size, len(images), len(reference))
        kwargs.update(
            input2=UInt8Images(reference),
            input2_cache_name=reference_name,
            kid_subsets=protocol.kid_subsets,
            kid_subset_size=n_kid,
        )
    names = [n for n in (images_name, reference_name if binary else None) if n]

    def calculate() -> dict[str, Any]:
        if cache_root is None:
            return dict(torch_fidelity.calculate_metrics(**kwargs))
        # torch-fidelity unpickles its cache with weights_only=False: it gets a private
        # cache_root holding only entries we loaded as tensors (fidelity_files.py)
        with private_cache(cache_root, names, log) as private:
            return dict(torch_fidelity.calculate_metrics(**kwargs, cache_root=str(private)))

    with rng.preserved():
        if binary and cache_root is not None and reference_name is not None:
            with file_lock(cache_root / f"{reference_name}.lock"):
                result = calculate()
        else:
            result = calculate()
    out = {k: float(v) for k, v in result.items()}
    if binary and protocol.kid:
        out["kid_subset_size_used"] = kwargs["kid_subset_size"]
    return out


def provenance(weights: InceptionWeights, protocol: Protocol) -> dict[str, Any]:
    return {
        "judge": "inception",
        "feature_extractor": FEATURE_EXTRACTOR,
        "torch_fidelity": torch_fidelity_version(),
        "weights_sha256": weights.sha256,
        "weights_path": weights.path,
        "weights_staged": weights.staged,
        "protocol": protocol.to_dict(),
    }


def diversity(images: Tensor, n_pairs: int = 2000, seed: int = 0) -> float:
    """Mean L2 distance between random pairs of images, pixels scaled to [0, 1]. Collapsed
    generators produce near-identical samples: their diversity is far below the data's."""
    n = len(images)
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, n, (n_pairs,), generator=g)
    b = (a + torch.randint(1, n, (n_pairs,), generator=g)) % n  # never the same image
    x = images.float().div_(255.0).flatten(1)
    return float((x[a] - x[b]).norm(dim=1).mean())


# --------------------------------------------------------------------------------------------
# the verdict: did a cell train?
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerdictThresholds:
    """A completed cell counts as trained when its final Inception score reaches
    ``is_ratio`` of the real data's score and its samples are at least ``diversity_ratio`` as
    diverse as the real images (pixel-space pairwise distance). Recorded with every verdict."""

    is_ratio: float = 0.5
    diversity_ratio: float = 0.5
    # judges that know the data's modes (the demo judge): a cell whose samples are mostly
    # recognisable (confident fraction at least half the data's) but cover fewer than this
    # fraction of the modes the data covers has collapsed onto a few modes
    modes_ratio: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict(
    state: str, final: Mapping[str, Any] | None, thresholds: VerdictThresholds
) -> dict[str, Any]:
    """{"verdict": trained | low-quality | collapsed | diverged | failed | incomplete |
    unevaluated, "reasons": [...], "thresholds": {...}}."""
    out: dict[str, Any] = {"thresholds": thresholds.to_dict(), "reasons": []}
    if state in ("diverged", "failed"):
        out["verdict"] = state
    elif state != "completed":
        out["verdict"] = "incomplete"
    elif not final or final.get(IS_MEAN) is None or final.get("real_" + IS_MEAN) is None:
        out["verdict"] = "unevaluated"
    else:
        is_ratio = final[IS_MEAN] / final["real_" + IS_MEAN]
        div_ratio = (
            final["diversity"] / final["real_diversity"] if final.get("real_diversity") else None
        )
        out.update(is_ratio=is_ratio, diversity_ratio=div_ratio, judge=final.get("judge"))
        if div_ratio is not None and div_ratio < thresholds.diversity_ratio:
            out["verdict"] = "collapsed"
            out["reasons"].append(
                f"diversity {div_ratio:.2f} of the data's < {thresholds.diversity_ratio}"
            )
        few = _few_modes(final, thresholds)
        if few:
            out["verdict"] = "collapsed"
            out["reasons"].append(few)
        if is_ratio < thresholds.is_ratio:
            out["verdict"] = out.get("verdict", "low-quality")
            out["reasons"].append(f"IS {is_ratio:.2f} of the data's < {thresholds.is_ratio}")
        out.setdefault("verdict", "trained")
    return out


def _few_modes(final: Mapping[str, Any], thresholds: VerdictThresholds) -> str | None:
    """Why the samples count as collapsed onto few modes, or None (also when the judge does
    not know the data's modes)."""
    keys = ("modes_covered", "real_modes_covered", "confident_fraction", "real_confident_fraction")
    if any(not isinstance(final.get(k), int | float) for k in keys):
        return None
    modes, real_modes = final["modes_covered"], final["real_modes_covered"]
    recognisable = final["confident_fraction"] >= 0.5 * final["real_confident_fraction"]
    if recognisable and real_modes > 0 and modes < thresholds.modes_ratio * real_modes:
        return (
            f"{modes} of the data's {real_modes} modes covered < {thresholds.modes_ratio} "
            f"(confident fraction {final['confident_fraction']:.2f})"
        )
    return None
