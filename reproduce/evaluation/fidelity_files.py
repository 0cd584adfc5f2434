"""Every file torch-fidelity would unpickle, handed to it so that none can run code.

torch-fidelity loads two kinds of files with ``torch.load(weights_only=False)``, which runs
whatever a pickle names: the feature extractor's weights (``feature_extractor_inceptionv3``)
and every cached feature or statistics file under its ``cache_root`` (``utils.py``). Both
may come from places other people write: a weights file named on the command line, staged
in a shared cache or downloaded; a results directory shared on a cluster. So torch-fidelity
never reads them:

- **weights**: read once (a regular file, bounded size), checked against the sha256 the run
  verified, loaded from those very bytes with ``weights_only=True`` (tensors only: never
  code), and saved again into a private directory of this process; torch-fidelity gets that
  copy's path.
- **the feature cache**: the results directory's ``.cache/fidelity/`` holds this project's
  own files: tensors only (numpy arrays stored as tensors), loaded with
  ``weights_only=True``. For each call torch-fidelity gets a private, empty-but-for-ours
  ``cache_root``: the entries of the call's cache names, rewritten by us in its format;
  what it computes there is stored back in ours. A planted or corrupt entry is not loaded:
  it is computed again and replaced.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import io
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..fileio import NotRegularFile, atomic_write_bytes, read_regular
from ..rundir.checkpoint import reason

MAX_WEIGHTS_BYTES = 1 << 30  # Inception-v3 is 95 MB, the demo judge well under 1 MB
MAX_CACHE_BYTES = 4 << 30  # features of 1e6 images x 2048 floats: 8 GB; bedrooms' 50k: 0.4 GB
_NUMPY = "__numpy__"  # marks a numpy array stored as a tensor in our cache format

_private: dict[str, Path] = {}  # weights sha256 -> this process's safe copy


class UnsafeFile(ValueError):
    """A file that does not load as tensors only (code, or not a torch file at all)."""


def load_tensors(data: bytes, what: str) -> Any:
    """``torch.load`` of ``data`` with ``weights_only=True``: tensors, numbers, strings and
    containers of them; UnsafeFile for anything else (a pickle naming any other global)."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UnsafeFile(f"{what} does not load as tensors only ({reason(e)})") from None


def _private_dir() -> Path:
    if "dir" not in _private:
        path = Path(tempfile.mkdtemp(prefix="reproduce-fidelity-"))  # 0700, this user's only
        atexit.register(shutil.rmtree, path, True)
        _private["dir"] = path
    return _private["dir"]


def safe_weights(path: str | Path, sha256: str | None = None) -> str:
    """The path of this process's private copy of the weights at ``path``: read once,
    checked against ``sha256`` (when given) on the bytes read, loaded as tensors only and
    saved again by us. UnsafeFile or NotRegularFile when it cannot be."""
    data = read_regular(Path(path), MAX_WEIGHTS_BYTES, follow=True)
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise UnsafeFile(f"{path} changed since it was verified (sha256 {digest[:16]}...)")
    if digest in _private:
        return str(_private[digest])
    state = load_tensors(data, str(path))
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise UnsafeFile(f"{path} is not a state dict of tensors")
    copy = _private_dir() / f"weights-{digest[:32]}.pt"
    torch.save(state, copy)
    _private[digest] = copy
    return str(copy)


# --------------------------------------------------------------------------------------------
# the feature cache
# --------------------------------------------------------------------------------------------
def _to_ours(obj: Any) -> Any:
    """torch-fidelity's cached object (tensors, dicts of numpy arrays) as tensors only."""
    import numpy as np

    if isinstance(obj, np.ndarray):
        return {_NUMPY: torch.from_numpy(np.ascontiguousarray(obj))}
    if isinstance(obj, dict):
        return {k: _to_ours(v) for k, v in obj.items()}
    return obj


def _to_theirs(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_NUMPY} and isinstance(obj[_NUMPY], torch.Tensor):
            return obj[_NUMPY].numpy()
        return {k: _to_theirs(v) for k, v in obj.items()}
    return obj


def _load_private(path: Path) -> Any:
    """A file torch-fidelity wrote in our private directory during this call (its format:
    tensors, or dicts of numpy arrays): loaded as tensors and numpy arrays only."""
    import importlib

    import numpy as np

    multiarray = importlib.import_module(
        "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
    )
    allowed: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64")]
    with torch.serialization.safe_globals(allowed):
        return torch.load(path, map_location="cpu", weights_only=True)


def _entries(shared: Path, names: Sequence[str]) -> list[Path]:
    if not shared.is_dir():
        return []
    return sorted(
        p for p in shared.iterdir()
        if p.suffix == ".pt" and any(p.name.startswith(n + "-") for n in names)
    )  # fmt: skip


@contextlib.contextmanager
def private_cache(shared: Path, names: Sequence[str], log: Any = None) -> Iterator[Path]:
    """A private ``cache_root`` for one torch-fidelity call: the shared cache's entries of
    ``names`` (its cache names), each loaded as tensors only and written back in
    torch-fidelity's format; afterwards what it added is stored in the shared cache in ours.
    An entry that does not load that way is left out (recomputed, then replaced) and named
    to ``log``."""
    private = Path(tempfile.mkdtemp(prefix="reproduce-fidelity-cache-"))
    try:
        given = set()
        for entry in _entries(shared, names):
            try:
                obj = _to_theirs(load_tensors(read_regular(entry, MAX_CACHE_BYTES), str(entry)))
            except (UnsafeFile, OSError) as e:  # NotRegularFile is an OSError
                if log is not None:
                    log(f"cached features {entry.name} not used: {e}")
                continue
            torch.save(obj, private / entry.name)
            given.add(entry.name)
        yield private
        for made in sorted(private.glob("*.pt")):
            if made.name in given:
                continue
            buf = io.BytesIO()
            torch.save(_to_ours(_load_private(made)), buf)
            target = shared / made.name
            if target.is_dir() and not target.is_symlink():
                if log is not None:
                    log(f"cached features {made.name} not stored: a directory holds its name")
                continue
            # a rename over the name: a link or FIFO planted there is replaced, not followed
            atomic_write_bytes(target, buf.getvalue())
    finally:
        shutil.rmtree(private, ignore_errors=True)


__all__ = [
    "MAX_CACHE_BYTES", "MAX_WEIGHTS_BYTES", "NotRegularFile", "UnsafeFile", "load_tensors",
    "private_cache", "safe_weights",
]  # fmt: skip
