"""``python -m reproduce prepare-data``: raw images to the paper's 64x64 training set, once.

Sources:

* the official LSUN LMDB layout (``bedroom_train_lmdb/`` holding ``data.mdb``): every key an
  image id, every value the encoded image (WebP in the official files; JPEG and PNG too);
* a folder of images, searched recursively (``IMAGE_EXTENSIONS``).

Each image is decoded, converted to RGB (grayscale, palette and RGBA images are converted,
not rejected), its shorter side resized to 64 px (PIL bicubic, antialiased) and centre-cropped
to 64x64 (SPEC.md E.2). Unreadable images and images under 64 px on the short side are skipped
and counted; above ``--max-skipped`` of the source (default 1%) the source is rejected.

The cache (``--out``)::

    images.npy      uint8 (R, 3, 64, 64): row r holds the r-th source item in sorted key (path)
                    order; rows of skipped items are zero and belong to no split
    splits.npz      int64 row indices ``train`` and ``val``; an image is held out when the
                    sha256 of its key falls below --val-fraction (independent of everything else)
    manifest.json   written last, so its presence means complete: counts, source, options,
                    preprocessing, library versions, the sha256 of every shard of rows and of
                    splits.npz, and the fingerprint that enters every run id trained on it
    .prepare/       while preparing only: the plan and one record per finished shard

Preparation runs in shards of ``--shard-rows`` rows (default 4096) over a process pool. A
shard's rows are written in place into ``images.npy`` (a fixed position per source item, so
shards are independent and idempotent), flushed, and then its record is written atomically;
an interrupted preparation (even SIGKILL) resumes with the shards that have no record.

This module imports no torch: its worker processes start in a fraction of a second.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from .. import faults
from ..config.runtime import usable_cpus
from ..errors import UserError
from ..fileio import (
    atomic_write_bytes,
    atomic_write_json,
    check_writable,
    nearest_existing,
    now_iso,
    read_json,
)
from .imagecache import (
    FORMAT,
    IMAGES,
    MANIFEST,
    PREPROCESSING_VERSION,
    RESIZE,
    RESOLUTION,
    SPLITS,
    cache_fingerprint,
    read_manifest,
    verify,
)

ROW_BYTES = 3 * RESOLUTION * RESOLUTION  # 12,288 bytes per image
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
SHARD_ROWS = 4096  # ~50 MB of output per shard
MAX_SKIPPED = 0.01
WORKDIR = ".prepare"


# --------------------------------------------------------------------------------------------
# one image
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


def held_out(key: bytes, fraction: float) -> bool:
    """Is the image with this key in the validation split? A pure function of the key."""
    if fraction <= 0:
        return False
    u = int.from_bytes(hashlib.sha256(b"val-split:" + key).digest()[:8], "little") / 2**64
    return u < fraction


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
def is_lmdb(path: Path) -> bool:
    return path.is_dir() and (path / "data.mdb").is_file()


def is_cache(path: Path) -> bool:
    return path.is_dir() and (
        (path / MANIFEST).is_file() or (path / IMAGES).is_file() or (path / WORKDIR).is_dir()
    )


def list_images(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )


def _open_lmdb(path: Path) -> Any:
    import lmdb

    # the official files are read-only on most clusters: no lock file, no readahead
    return lmdb.open(
        str(path), readonly=True, lock=False, readahead=False, meminit=False, max_readers=1
    )


@dataclass
class Source:
    kind: str  # lmdb | folder
    path: Path
    keys: list[bytes]  # LMDB keys, or folder-relative POSIX paths (UTF-8, surrogateescape)

    @staticmethod
    def open(path: Path, flag: str = "--source") -> Source:
        if not path.exists():
            raise UserError(f"{flag}: {path} does not exist")
        if path.is_file() and path.name == "data.mdb":
            path = path.parent
        if is_lmdb(path):
            try:
                env = _open_lmdb(path)
                with env.begin() as txn:
                    keys = list(txn.cursor().iternext(keys=True, values=False))
                env.close()
            except Exception as e:  # lmdb.Error and its many subclasses
                raise UserError(f"{flag}: {path} is not a readable LMDB ({e})") from None
            if not keys:
                raise UserError(f"{flag}: the LMDB {path} is empty")
            return Source("lmdb", path, keys)
        if not path.is_dir():
            raise UserError(
                f"{flag}: {path} is neither an LMDB (a directory with data.mdb) nor a folder of "
                "images"
            )
        if is_cache(path):
            raise UserError(f"{flag}: {path} is already a prepared cache; train on it with --data")
        try:
            files = list_images(path)
        except OSError as e:
            raise UserError(f"{flag}: cannot read {path}: {e.strerror}") from None
        if not files:
            raise UserError(
                f"{flag}: {path} is neither an LMDB (a directory with data.mdb) nor a folder of "
                f"images: it holds no {', '.join(IMAGE_EXTENSIONS)} files (searched recursively)"
            )
        keys = [p.relative_to(path).as_posix().encode("utf-8", "surrogateescape") for p in files]
        return Source("folder", path, keys)

    def listing_digest(self) -> str:
        h = hashlib.sha256(self.kind.encode())
        for k in self.keys:
            h.update(len(k).to_bytes(4, "little"))
            h.update(k)
        return h.hexdigest()


_LMDB_ENVS: dict[str, Any] = {}  # one LMDB environment per worker process and source


def read_encoded(kind: str, root: str, key: bytes) -> bytes | Path | None:
    """The encoded image of ``key`` (a path for folders); None if the key has no value."""
    if kind == "folder":
        return Path(root) / key.decode("utf-8", "surrogateescape")
    env = _LMDB_ENVS.get(root)
    if env is None:
        env = _LMDB_ENVS[root] = _open_lmdb(Path(root))
    with env.begin(buffers=False) as txn:
        value = txn.get(key)
    return None if value is None else bytes(value)


# --------------------------------------------------------------------------------------------
# shards (run in worker processes)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardTask:
    index: int
    start: int  # first row
    keys: tuple[bytes, ...]
    kind: str
    root: str
    images: str  # path of images.npy


def run_shard(task: ShardTask) -> dict[str, Any]:
    """Decode, preprocess and write one shard's rows; returns the shard record."""
    sleep = float(faults.value("prepare-sleep") or 0)  # test hook: slow down to be killed
    out = np.load(task.images, mmap_mode="r+")
    rows = np.zeros((len(task.keys), 3, RESOLUTION, RESOLUTION), dtype=np.uint8)
    ok = np.zeros(len(task.keys), dtype=bool)
    skipped = {"unreadable": 0, "too-small": 0}
    for i, key in enumerate(task.keys):
        try:
            data = read_encoded(task.kind, task.root, key)
            if data is None:
                raise SkippedImage("unreadable")
            rows[i] = preprocess(data)
            ok[i] = True
        except SkippedImage as s:
            skipped[s.reason] += 1
        if sleep:
            time.sleep(sleep)
    out[task.start : task.start + len(rows)] = rows
    out.flush()
    del out
    return {
        "index": task.index,
        "start": task.start,
        "rows": len(rows),
        "ok": np.packbits(ok).tobytes().hex(),  # which rows hold images
        "skipped": skipped,
        "sha256": hashlib.sha256(rows.data).hexdigest(),
    }


def _unpack_ok(record: dict[str, Any]) -> np.ndarray:
    bits = np.frombuffer(bytes.fromhex(record["ok"]), dtype=np.uint8)
    return np.unpackbits(bits)[: record["rows"]].astype(bool)


# --------------------------------------------------------------------------------------------
# the preparation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Options:
    limit: int | None = None
    val_fraction: float = 0.0
    max_skipped: float = MAX_SKIPPED
    workers: int = field(default_factory=usable_cpus)
    progress: bool = True
    shard_rows: int = SHARD_ROWS


def library_versions() -> dict[str, str]:
    import PIL

    versions = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }
    try:
        import lmdb

        versions["lmdb"] = lmdb.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return versions


def _plan(source: Source, opts: Options) -> dict[str, Any]:
    """Everything that determines the cache's content (not workers or progress)."""
    rows = len(source.keys) if opts.limit is None else min(opts.limit, len(source.keys))
    return {
        "format": FORMAT,
        "source": {"kind": source.kind, "path": str(source.path.resolve())},
        "source_items": len(source.keys),
        "listing_sha256": source.listing_digest(),
        "limit": opts.limit,
        "rows": rows,
        "val_fraction": opts.val_fraction,
        "preprocessing": RESIZE,
        "preprocessing_version": PREPROCESSING_VERSION,
        "resolution": RESOLUTION,
        "shard_rows": opts.shard_rows,
    }


def _header_bytes(rows: int) -> int:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf,
        {"descr": "|u1", "fortran_order": False, "shape": (rows, 3, RESOLUTION, RESOLUTION)},
    )
    return buf.tell()


def _check_out(out: Path, plan: dict[str, Any]) -> str:
    """'new', 'resume' or 'done'; UserError for an --out we must not touch."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and (out / MANIFEST).is_file():
        try:
            old = read_json(out / MANIFEST)["plan"]
        except (OSError, ValueError, KeyError):
            raise UserError(
                f"--out: {out / MANIFEST} is unreadable; choose another --out"
            ) from None
        if old == plan:
            return "done"
        raise UserError(f"--out: {out} holds a cache prepared from {_differences(old, plan)}")
    if out.is_dir() and (out / WORKDIR / "plan.json").is_file():
        try:
            old = read_json(out / WORKDIR / "plan.json")
        except (OSError, ValueError):
            old = None
        if old == plan:
            return "resume"
        raise UserError(
            f"--out: {out} holds an interrupted preparation of "
            f"{_differences(old or {}, plan)}; rerun it with the same options or choose another "
            "--out"
        )
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"--out: {out} is not empty and not a cache; choose a new directory")
    check_writable(out, "--out")
    return "new"


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = ", ".join(f"{k} {old.get(k)!r} (now {new.get(k)!r})" for k in keys[:3])
    return f"other options: {shown}" if shown else "the same options"


def _check_space(out: Path, rows: int) -> None:
    need = _header_bytes(rows) + rows * ROW_BYTES + 16 * rows + 1_000_000  # + splits, manifest
    images = out / IMAGES
    if images.is_file():  # resuming: the blocks already allocated count as available
        need -= os.stat(images).st_blocks * 512
    base = nearest_existing(out)
    free = shutil.disk_usage(base).free
    if free < need:
        raise UserError(
            f"--out: {base} has {free:,} bytes free; the cache of {rows:,} images needs "
            f"{need:,} more ({ROW_BYTES:,} bytes per image)"
        )


def _validate(opts: Options) -> None:
    if opts.limit is not None and opts.limit < 1:
        raise UserError(f"--limit: must be at least 1, got {opts.limit}")
    if not 0 <= opts.val_fraction < 1:
        raise UserError(f"--val-fraction: must be in [0, 1), got {opts.val_fraction}")
    if not 0 <= opts.max_skipped <= 1:
        raise UserError(f"--max-skipped: must be in [0, 1], got {opts.max_skipped}")
    if opts.workers < 1:
        raise UserError(f"--workers: must be at least 1, got {opts.workers}")
    if opts.shard_rows < 1:
        raise UserError(f"--shard-rows: must be at least 1, got {opts.shard_rows}")


@dataclass
class Prepared:
    path: Path
    manifest: dict[str, Any]
    resumed_shards: int  # shards found finished when this call started


def prepare(source_path: Path, out: Path, opts: Options) -> Prepared:
    """Prepare (or resume preparing) the cache; returns its manifest. Every check on the
    inputs happens before anything is written."""
    _validate(opts)
    source = Source.open(source_path)
    plan = _plan(source, opts)
    state = _check_out(out, plan)
    if state == "done":
        manifest = read_manifest(out, "--out")
        verify(out, manifest, "--out")  # the same verification as train's --data
        return Prepared(out, manifest, -1)
    rows = plan["rows"]
    _check_space(out, rows)

    work = out / WORKDIR
    (work / "shards").mkdir(parents=True, exist_ok=True)
    if state == "new":
        np.lib.format.open_memmap(
            out / IMAGES, mode="w+", dtype=np.uint8, shape=(rows, 3, RESOLUTION, RESOLUTION)
        ).flush()  # a sparse file; shards fill it in place
        atomic_write_json(work / "plan.json", plan)

    size = opts.shard_rows
    n_shards = -(-rows // size)
    records = _read_records(work, n_shards)
    resumed = len(records)
    todo = [
        ShardTask(
            s,
            s * size,
            tuple(source.keys[s * size : min(rows, (s + 1) * size)]),
            source.kind,
            str(source.path),
            str(out / IMAGES),
        )
        for s in range(n_shards)
        if s not in records
    ]
    if resumed:
        print(f"resuming: {resumed} of {n_shards} shards already prepared", file=sys.stderr)
    _run_shards(todo, records, work, rows, opts)
    manifest = _finish(out, plan, source, records, opts)
    return Prepared(out, manifest, resumed)


def _read_records(work: Path, n_shards: int) -> dict[int, dict[str, Any]]:
    records = {}
    for s in range(n_shards):
        f = work / "shards" / f"{s:06d}.json"
        try:
            records[s] = read_json(f)
        except (OSError, ValueError):  # absent (or, impossibly, torn): prepare it again
            continue
    return records


def _check_skipped(records: dict[int, dict[str, Any]], rows: int, opts: Options) -> None:
    unreadable = sum(r["skipped"]["unreadable"] for r in records.values())
    small = sum(r["skipped"]["too-small"] for r in records.values())
    if unreadable + small > int(opts.max_skipped * rows):
        raise UserError(
            f"--source: {unreadable + small} of {rows} images are unusable ({unreadable} "
            f"unreadable, {small} under 64 px on the short side); at most "
            f"{opts.max_skipped:.1%} may be skipped (--max-skipped); finished shards are kept "
            "and a rerun resumes"
        )


def _run_shards(
    todo: list[ShardTask],
    records: dict[int, dict[str, Any]],
    work: Path,
    rows: int,
    opts: Options,
) -> None:
    _check_skipped(records, rows, opts)
    if not todo:
        return
    from tqdm import tqdm

    done_rows = sum(r["rows"] for r in records.values())
    bar = tqdm(total=rows, initial=done_rows, unit="img", disable=not opts.progress,
               desc="prepare-data", smoothing=0.05, file=sys.stderr)  # fmt: skip
    # spawn: the parent may hold torch's threads; workers import only numpy, PIL and lmdb
    ctx = multiprocessing.get_context("spawn")
    workers = min(opts.workers, len(todo))
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        pending = {pool.submit(run_shard, t) for t in todo}
        try:
            while pending:
                finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    rec = fut.result()
                    atomic_write_json(work / "shards" / f"{rec['index']:06d}.json", rec)
                    records[rec["index"]] = rec
                    bar.update(rec["rows"])
                _check_skipped(records, rows, opts)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
        finally:
            bar.close()


def _finish(
    out: Path,
    plan: dict[str, Any],
    source: Source,
    records: dict[int, dict[str, Any]],
    opts: Options,
) -> dict[str, Any]:
    rows = plan["rows"]
    ok = np.concatenate([_unpack_ok(records[s]) for s in sorted(records)])
    assert len(ok) == rows
    val = np.array([held_out(k, opts.val_fraction) for k in source.keys[:rows]], dtype=bool)
    buf = io.BytesIO()
    np.savez(buf, train=np.flatnonzero(ok & ~val), val=np.flatnonzero(ok & val))
    atomic_write_bytes(out / SPLITS, buf.getvalue())
    skipped = {
        reason: sum(r["skipped"][reason] for r in records.values())
        for reason in ("unreadable", "too-small")
    }
    shards = [
        {"start": records[s]["start"], "rows": records[s]["rows"], "sha256": records[s]["sha256"]}
        for s in sorted(records)
    ]
    splits_sha = hashlib.sha256((out / SPLITS).read_bytes()).hexdigest()
    manifest = {
        "format": FORMAT,
        "fingerprint": cache_fingerprint(shards, splits_sha),
        "created": now_iso(),
        "plan": plan,
        "rows": rows,
        "count": {"train": int((ok & ~val).sum()), "val": int((ok & val).sum())},
        "skipped": skipped,
        "max_skipped": opts.max_skipped,
        "source": plan["source"],
        "preprocessing": RESIZE,
        "versions": library_versions(),
        "images": {"file": IMAGES, "shape": [rows, 3, RESOLUTION, RESOLUTION], "shards": shards},
        "splits": {"file": SPLITS, "sha256": splits_sha},
    }
    atomic_write_json(out / MANIFEST, manifest)
    shutil.rmtree(out / WORKDIR, ignore_errors=True)
    return manifest
