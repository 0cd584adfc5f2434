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
from typing import Any, BinaryIO

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
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and type(e) is OSError:
            raise OSError(e.errno, e.strerror, str(path)) from None  # say which file
        raise
    fsync_dir(path.parent)


class NotRegularFile(OSError):
    """A path that is a FIFO, a device, a directory or (unless followed) a link, or a file
    larger than its reader allows."""


def open_regular(path: Path, follow: bool = False) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; NotRegularFile for a FIFO, a
    device, a directory or (unless ``follow``) a symbolic link. The open never blocks and
    the check is made on the open descriptor."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(f"{path} is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: Path, max_bytes: int, follow: bool = False) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or NotRegularFile: never a read
    that blocks (a FIFO), never an unbounded one (a device, a huge file) and, unless
    ``follow``, never through a symbolic link (O_NOFOLLOW). The checks are made on the open
    descriptor, so the file read is the file checked."""
    with open_regular(path, follow) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise NotRegularFile(f"{path} holds {size:,} bytes, more than {max_bytes:,}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew while being read
        raise NotRegularFile(f"{path} holds more than {max_bytes:,} bytes")
    return data


def make_real_dirs(root: Path, path: Path) -> Path:
    """``path`` (under ``root``) as a directory whose every component below ``root`` is a
    real directory, made where missing: NotRegularFile where one is a symbolic link or not
    a directory, so that nothing written there lands in a folder a link names. ``root`` (a
    results directory the user chose, which may itself be a link) is taken as it is."""
    root = Path(root)
    rel = Path(os.path.relpath(path, root))
    if rel.parts[:1] == ("..",):
        raise NotRegularFile(f"{path} is not under {root}")
    here = root
    for part in rel.parts:
        if part == ".":
            continue
        here = here / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(here)  # never follows a link at ``here`` (EEXIST instead)
        st = os.lstat(here)
        if stat.S_ISLNK(st.st_mode):
            raise NotRegularFile(f"{here} is a symbolic link; nothing is written through links")
        if not stat.S_ISDIR(st.st_mode):
            raise NotRegularFile(f"{here} is not a directory")
    return path


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


MAX_JSON_BYTES = 64 << 20  # a status, config, manifest or record: kilobytes in practice
MAX_JSONL_BYTES = 256 << 20  # stats.jsonl of a million iterations: about 250 MB


def parse_json(data: str | bytes) -> Any:
    """``json.loads``, with nesting too deep for the parser (``[[[[...``) a ValueError like
    any other malformed text, not a RecursionError."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file that is a regular file (not a link, FIFO or device) of at most
    ``max_bytes``: OSError (NotRegularFile) or ValueError otherwise."""
    return parse_json(read_regular(path, max_bytes))


def read_jsonl(path: Path, max_bytes: int = MAX_JSONL_BYTES) -> list[dict[str, Any]]:
    """All complete JSON lines that are objects whose ``iter``, where present, is an integer
    (every run file's rows are keyed by it); other lines are skipped, and a torn last line
    (crash mid-append) is ignored. A missing file has no rows; OSError (NotRegularFile) for a
    link, FIFO, device or a file over ``max_bytes``."""
    rows: list[dict[str, Any]] = []
    try:
        data = read_regular(path, max_bytes)
    except FileNotFoundError:
        return rows
    lines = data.split(b"\n")
    for line in lines[:-1]:  # the last piece is a torn line (or empty)
        try:
            row = parse_json(line)
        except ValueError:
            continue
        if isinstance(row, dict) and ("iter" not in row or _is_int(row["iter"])):
            rows.append(row)
    return rows


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def last_jsonl_row(path: Path, window: int = 1 << 20) -> dict[str, Any]:
    """The last complete line of a JSON-lines file that is a JSON object, read from the end of
    the file: a 200,000-iteration ``stats.jsonl`` is not read whole for its last row. Only the
    last ``window`` bytes are looked at (a file whose last MiB holds no valid row is corrupt,
    and gives ``{}``); a torn last line is ignored, as by ``read_jsonl``."""
    try:  # a link, FIFO or device: no rows, never a hang
        with open_regular(path) as f:
            start = max(0, f.seek(0, os.SEEK_END) - window)
            f.seek(start)
            lines = f.read(window).split(b"\n")[:-1]  # the last piece: the torn tail, or empty
    except OSError:
        return {}
    for line in reversed(lines[1:] if start else lines):  # the first may be cut: skipped
        try:
            row = parse_json(line)
        except ValueError:
            continue
        if isinstance(row, dict) and ("iter" not in row or _is_int(row["iter"])):
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
