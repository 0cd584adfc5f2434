"""Atomic file I/O and the JSON values read back, for every file the harness writes.

Every whole-file write is atomic: temp file in the same directory, fsync, rename, fsync of the
directory. A reader therefore sees either the old or the new file, never a torn one. Appends
(the run's JSON-lines files and its log) never follow a symbolic link; a reader of a JSON-lines
file ignores a torn last line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import UserError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once at import (reading it means setting it)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; others may read results
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


class NotRegularFile(OSError):
    """A path that is a FIFO, a device, a directory or (unless followed) a link, or a file
    larger than its reader allows."""


def read_regular(path: Path, max_bytes: int, follow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or NotRegularFile: never a read
    that blocks (a FIFO), never an unbounded one (a device, a huge file) and, unless
    ``follow``, never through a symbolic link (O_NOFOLLOW). The checks are made on the open
    descriptor, so the file read is the file checked."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(f"{path} is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise NotRegularFile(f"{path} holds {st.st_size:,} bytes, more than {max_bytes:,}")
        chunks, left = [], max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:  # it grew while being read
        raise NotRegularFile(f"{path} holds more than {max_bytes:,} bytes")
    return data


def nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists():
        p = p.parent
    return p


def check_writable(path: Path, flag: str) -> Path:
    """The nearest existing ancestor of ``path``, which must be a writable directory (probed
    with a temporary file that is removed at once)."""
    base = nearest_existing(path)
    if not base.is_dir():
        raise UserError(f"{flag}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag}: cannot write to {base}: {e.strerror}") from None
    return base


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """All complete JSON lines; a torn last line (crash mid-append) is ignored."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn final line
            with contextlib.suppress(ValueError):
                rows.append(json.loads(line))
    return rows


def last_jsonl_row(path: Path, window: int = 1 << 20) -> dict[str, Any]:
    """The last complete line of a JSON-lines file that is a JSON object, read from the end of
    the file: a 200,000-iteration ``stats.jsonl`` is not read whole for its last row. Only the
    last ``window`` bytes are looked at (a file whose last MiB holds no valid row is corrupt,
    and gives ``{}``); a torn last line is ignored, as by ``read_jsonl``."""
    try:
        with path.open("rb") as f:
            start = max(0, f.seek(0, os.SEEK_END) - window)
            f.seek(start)
            lines = f.read().split(b"\n")[:-1]  # the last piece is the torn tail (or empty)
    except OSError:
        return {}
    for line in reversed(lines[1:] if start else lines):  # the first may be cut: skipped
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(row, dict):
            return row
    return {}


def append_text(path: Path, text: str, fsync: bool = False) -> None:
    """Append to a run file, never through a symbolic link (O_NOFOLLOW: ELOOP instead)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(text)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def finite(v: Any) -> float | None:
    """A JSON value as a finite float, or None (text, booleans, null, nan and inf, which
    ``json`` reads from ``NaN``, ``Infinity`` and ``1e400``)."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        f = float(v)
        return f if math.isfinite(f) else None
    return None


def count(v: Any, default: int = 0) -> int:
    """A JSON value as a non-negative integer count (iterations, steps), else ``default``."""
    f = finite(v)
    return int(f) if f is not None and 0 <= f < 2**53 and f == int(f) else default


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
