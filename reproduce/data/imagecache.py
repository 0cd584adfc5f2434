"""The prepared image cache (made by ``prepare-data``, SPEC.md E.2): its file layout, its
fingerprint, and reading it back with verification.

A cache is ``images.npy`` (uint8 rows of 3x64x64), ``splits.npz`` (row indices ``train`` and
``val``) and ``manifest.json`` (written last). ``verify`` checks the data against the
manifest and recomputes the fingerprint that enters every run id: fully on first use, then
by sampled shards while a stamp in the user's cache vouches for the files (see ``verify``).
No torch here.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import io
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config.runtime import usable_cpus
from ..envvars import user_cache
from ..errors import UserError
from ..fileio import atomic_write_json, now_iso, read_json

RESOLUTION = 64
RESIZE = "PIL bicubic (antialiased), shorter side to 64, centre crop 64x64, RGB"
PREPROCESSING_VERSION = 1  # bump when the pixels of a prepared cache would change
FORMAT = "reproduce-image-cache"
MANIFEST, IMAGES, SPLITS = "manifest.json", "images.npy", "splits.npz"


def cache_fingerprint(shards: list[dict[str, Any]], splits_sha256: str) -> str:
    """The fingerprint that enters every run id: a function of every shard's content hash and
    of the splits, recomputed whenever a cache is verified (never trusted from the manifest)."""
    h = hashlib.sha256(f"{FORMAT}:{PREPROCESSING_VERSION}:{RESIZE}".encode())
    for s in shards:
        h.update(s["sha256"].encode())
    h.update(splits_sha256.encode())
    return f"cache-{h.hexdigest()[:16]}"


def read_manifest(path: Path, flag: str = "--data") -> dict[str, Any]:
    if not (path / MANIFEST).is_file():
        raise UserError(
            f"{flag}: {path} is an unfinished cache (no {MANIFEST}); rerun the prepare-data "
            "command that created it to finish it"
        )
    try:
        manifest = read_json(path / MANIFEST)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        return dict(manifest)
    except (OSError, ValueError) as e:
        raise UserError(f"{flag}: {path / MANIFEST} is unreadable ({e})") from None


ENV_STAMPS = "REPRODUCE_VERIFIED_DIR"  # where verification stamps go (default: user cache)


def stamp_path(path: Path) -> Path:
    """The stamp of a cache's last full verification (see verify): in the user's cache
    directory, keyed by the cache's resolved path, never inside the cache (which may be
    read-only or shared, and a refused command writes nothing there)."""
    base = os.environ.get(ENV_STAMPS) or user_cache("verified")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:20]
    return Path(base) / f"{key}.json"


SAMPLED_SHARDS = 4  # shards re-hashed on every later use of a cache the stamp vouches for


def _file_state(path: Path) -> dict[str, int]:
    st = os.stat(path)
    # ctime too: an edit whose mtime was set back (os.utime) still moves it, and no one can
    # set it back
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino}  # fmt: skip


Span = tuple[int, int, str]  # a shard: (first row, rows, sha256)
Fail = Callable[[str], UserError]


def _manifest_fields(manifest: dict[str, Any], fail: Fail) -> tuple[Any, ...]:
    """(rows, shape, shards, splits sha256, split counts, fingerprint, spans), checked for
    structure and for shards that cover every row exactly once."""
    try:
        rows = int(manifest["rows"])
        shape = tuple(int(d) for d in manifest["images"]["shape"])
        shards = list(manifest["images"]["shards"])
        splits_expected = str(manifest["splits"]["sha256"])
        counts = {k: int(manifest["count"][k]) for k in ("train", "val")}
        fingerprint = str(manifest["fingerprint"])
        spans = [(int(s["start"]), int(s["rows"]), str(s["sha256"])) for s in shards]
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise fail(f"{MANIFEST} is missing or has a malformed field: {e}") from None
    if shape != (rows, 3, RESOLUTION, RESOLUTION):
        raise fail(f"images shape {list(shape)} for {rows} rows")
    if not spans:
        raise fail("it lists no shards, so nothing of the images could be checked")
    covered = 0
    for start, n, _ in spans:
        if start != covered or n < 1:
            raise fail(f"its shards do not cover rows 0..{rows - 1} in order (at row {covered})")
        covered += n
    if covered != rows:
        raise fail(f"its shards cover {covered} rows, the images have {rows}")
    return rows, shape, shards, splits_expected, counts, fingerprint, spans


def _check_splits(path: Path, rows: int, counts: dict[str, int], expected: str, fail: Fail) -> str:
    """``splits.npz`` against its sha256; indices in range, sorted, unique, disjoint and as
    many as the manifest counts. Returns the file's sha256."""
    try:
        blob = (path / SPLITS).read_bytes()
    except OSError as e:
        raise fail(f"{SPLITS}: {e.strerror}") from None
    splits_sha = hashlib.sha256(blob).hexdigest()
    if splits_sha != expected:
        raise fail(f"{SPLITS} sha256 {splits_sha[:12]}...")
    try:
        with np.load(io.BytesIO(blob)) as z:
            split = {k: np.asarray(z[k]) for k in ("train", "val")}
    except (KeyError, ValueError, OSError) as e:
        raise fail(f"{SPLITS}: {e}") from None
    for name, idx in split.items():
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or len(idx) != counts[name]:
            raise fail(f"split {name!r} has {idx.size} {idx.dtype} indices, manifest counts "
                       f"{counts[name]}")  # fmt: skip
        if len(idx) and (idx.min() < 0 or idx.max() >= rows):
            raise fail(f"split {name!r} has indices outside rows 0..{rows - 1}")
        if len(idx) > 1 and not (np.diff(idx) > 0).all():
            raise fail(f"split {name!r} is not sorted and unique")
    in_train = np.zeros(rows, dtype=bool)
    in_train[split["train"]] = True
    if in_train[split["val"]].any():
        raise fail("the train and val splits share images")
    return splits_sha


def _hash_shards(path: Path, arr: np.ndarray, spans: list[Span], fail: Fail) -> str:
    """Every shard's sha256 ("full"), or ``SAMPLED_SHARDS`` of them when the stamp still
    matches the files ("sampled"); a full pass that succeeds writes the stamp."""
    images = path / IMAGES
    state = {"manifest_sha256": hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest(),
             "images": _file_state(images), "splits": _file_state(path / SPLITS)}  # fmt: skip
    try:
        stamp = read_json(stamp_path(path))
    except (OSError, ValueError):
        stamp = None
    if isinstance(stamp, dict) and {k: stamp.get(k) for k in state} == state:
        picks = sorted({int.from_bytes(os.urandom(8), "little") % len(spans)
                        for _ in range(SAMPLED_SHARDS)})  # fmt: skip
        todo, kind = [spans[i] for i in picks], "sampled"
    else:
        todo, kind = spans, "full"

    def digest(span: Span) -> tuple[Span, str]:
        start, n, _ = span
        return span, hashlib.sha256(np.ascontiguousarray(arr[start : start + n]).data).hexdigest()

    with cf.ThreadPoolExecutor(min(8, usable_cpus())) as pool:
        for (start, n, expected), got in pool.map(digest, todo):
            if got != expected:
                with contextlib.suppress(OSError):
                    stamp_path(path).unlink(missing_ok=True)  # the next use verifies fully
                raise fail(f"rows {start}..{start + n - 1} have sha256 {got[:12]}...")
    if kind == "full":
        with contextlib.suppress(OSError):  # unrecorded: a full verification next time
            stamp = {**state, "cache": str(path.resolve()), "verified": now_iso()}
            atomic_write_json(stamp_path(path), stamp)
    return kind


def verify(path: Path, manifest: dict[str, Any], flag: str = "--data") -> str:
    """The cache's data is what its manifest says, and its fingerprint is the one its content
    gives: the one verification behind ``train``/``matrix`` (``--data``) and ``prepare-data``
    (``--out``). Raises a one-line UserError ("prepare it again") naming what is wrong.

    Always (milliseconds even for 3 million images): the manifest's structure; a non-empty
    shard list that covers every row exactly once; ``splits.npz`` against its sha256; split
    indices in range, sorted, unique and disjoint, as many as the manifest counts; and the
    fingerprint recomputed from the shard hashes and the splits.

    The images' content: on first use every shard's sha256 (hashlib releases the GIL; a
    thread pool), after which a stamp (``stamp_path``: in the user's cache directory) records
    the manifest's sha256 and the files' size, mtime, ctime and inode. A later use whose files
    still match the stamp re-hashes ``SAMPLED_SHARDS`` shards drawn at random from the OS
    entropy pool; any change to the files' size, mtime, ctime or inode means a full
    verification again.
    Where no stamp can be written, every use is a full verification. Returns "full" or
    "sampled"."""

    def fail(what: str) -> UserError:
        return UserError(
            f"{flag}: the cache {path} does not match its manifest ({what}); prepare it again"
        )

    fields = _manifest_fields(manifest, fail)
    rows, shape, shards, splits_expected, counts, fingerprint, spans = fields
    images = path / IMAGES
    try:
        arr = np.load(images, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise fail(f"{IMAGES}: {e}") from None
    if arr.shape != shape or arr.dtype != np.uint8:
        raise fail(f"{IMAGES} has shape {arr.shape} {arr.dtype}, manifest says {shape} uint8")
    splits_sha = _check_splits(path, rows, counts, splits_expected, fail)
    if cache_fingerprint(shards, splits_sha) != fingerprint:
        raise fail(f"fingerprint {fingerprint} is not the one its shard hashes give")
    return _hash_shards(path, arr, spans, fail)


def load_splits(path: Path) -> dict[str, np.ndarray]:
    with np.load(path / SPLITS) as z:
        return {k: z[k] for k in ("train", "val")}


def iter_summary(manifest: dict[str, Any]) -> Iterator[str]:
    c, s = manifest["count"], manifest["skipped"]
    yield f"fingerprint {manifest['fingerprint']}"
    yield f"images      {c['train']:,} train, {c['val']:,} held out"
    yield f"skipped     {s['unreadable']:,} unreadable, {s['too-small']:,} under 64 px"
