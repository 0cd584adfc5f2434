"""Atomic, verified checkpoints (RELIABILITY.md).

A checkpoint is one folder ``ckpt-NNNNNNNN`` (NNNNNNNN = generator iterations done) holding
``state.pt`` (a ``torch.save`` dict loadable with ``weights_only=True``) and ``meta.json``
(iteration, size and sha256 of state.pt, config hash). The folder is written under a temporary
name, every file is fsynced, the folder is renamed into place and the parent fsynced; meta.json
with a matching checksum is the completion marker. Loading scans newest first, verifies, and
falls back to the previous one. A crash (or a full disk) in the middle of a write therefore
never destroys the previous good checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from architectures import get_pair

from .. import faults
from ..config.run import RunConfig
from ..errors import DiskFullError
from ..fileio import fsync_dir, read_json, read_regular
from ..gan.procedures import ADAMS

FORMAT = 1
PREFIX = "ckpt-"
TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Checkpoint:
    iteration: int
    path: Path


def _name(iteration: int) -> str:
    return f"{PREFIX}{iteration:08d}"


def list_checkpoints(ckpt_dir: Path) -> list[Checkpoint]:
    """Complete-looking checkpoint folders, newest first (not yet verified)."""
    out = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.is_dir() and p.name.startswith(PREFIX):
                with contextlib.suppress(ValueError):
                    out.append(Checkpoint(int(p.name[len(PREFIX) :]), p))
    return sorted(out, key=lambda c: c.iteration, reverse=True)


def remove_orphans(ckpt_dir: Path) -> list[Path]:
    """Delete temp folders left by interrupted writes or deletions. Call only while holding
    the run's lease (no other writer can be active)."""
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _write_file(path: Path, data: bytes, fault_iteration: int | None = None) -> None:
    with path.open("wb") as f:
        if fault_iteration is not None and faults.active("ckpt-stall", fault_iteration):
            # test hook: leave a torn state.pt behind and wait to be SIGKILLed
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            faults.stall()
        if fault_iteration is not None and faults.active("ckpt-enospc", fault_iteration):
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    ckpt_dir: Path, iteration: int, state: dict[str, Any], *, config_hash: str, keep: int
) -> Path:
    """Write ``state`` as checkpoint ``iteration``, then prune to the newest ``keep``.

    Raises DiskFullError (after removing the partial write) when the disk is full.
    """
    final = ckpt_dir / _name(iteration)
    if final.exists() and verify(final) is not None:
        return final  # same iteration already saved (e.g. a resume saved at once again)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f"{TMP_PREFIX}{_name(iteration)}-{uuid.uuid4().hex[:8]}"
    try:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        tmp.mkdir()
        _write_file(tmp / "state.pt", data, fault_iteration=iteration)
        meta = {
            "format": FORMAT,
            "iteration": iteration,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "config_hash": config_hash,
        }
        _write_file(tmp / "meta.json", json.dumps(meta, indent=2).encode())
        fsync_dir(tmp)
        if final.exists():  # an unverifiable leftover under the final name: replace it
            _discard(final)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(e.errno, f"disk full while writing checkpoint {final}") from e
        raise
    for old in list_checkpoints(ckpt_dir)[keep:]:
        _discard(old.path)
    return final


def set_aside(path: Path) -> Path:
    """Move an unusable checkpoint out of the way (kept for inspection, never loaded or
    pruned, and no longer blocking a new checkpoint of the same iteration)."""
    aside = path.with_name(f".unusable-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, aside)
    return aside


def _discard(path: Path) -> None:
    """Delete a checkpoint folder without ever leaving a half-deleted folder under a valid name."""
    trash = path.with_name(f"{TMP_PREFIX}del-{path.name}-{uuid.uuid4().hex[:8]}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def verify(path: Path) -> bytes | None:
    """The bytes of ``state.pt`` if ``meta.json`` exists and its size and checksum match."""
    try:  # regular files only (a FIFO would hang, /dev/zero never end), bounded
        meta = read_json(path / "meta.json", max_bytes=1 << 16)
        size = meta.get("size") if isinstance(meta, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return None
        data = read_regular(path / "state.pt", max_bytes=size)
    except (OSError, ValueError):
        return None
    if meta.get("format") != FORMAT or size != len(data):
        return None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return None
    return data


def reason(e: BaseException) -> str:
    """One line for a load failure (torch's own message suggests weights_only=False: cut)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text.split(" Please file an issue")[0].split(" In PyTorch 2.6")[0]
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


def candidates(
    ckpt_dir: Path, map_location: str | torch.device = "cpu"
) -> Iterator[tuple[Checkpoint, dict[str, Any] | None, str | None]]:
    """Every checkpoint, newest first: (checkpoint, its state, None) when it verifies and
    loads (``weights_only``: never code), else (checkpoint, None, why it cannot be used)."""
    for ckpt in list_checkpoints(ckpt_dir):
        data = verify(ckpt.path)
        if data is None:
            yield ckpt, None, "its size or sha256 does not match meta.json, or a file is missing"
            continue
        try:
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception as e:  # refused globals, truncated zip, wrong format: all skipped
            yield ckpt, None, f"does not load ({reason(e)})"
            continue
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            yield ckpt, None, "does not hold a training state of this format"
            continue
        yield ckpt, state, None


def load_latest(
    ckpt_dir: Path, map_location: str | torch.device = "cpu"
) -> tuple[Checkpoint, dict[str, Any], list[Path]] | None:
    """Newest checkpoint that verifies and loads, its state, and the paths skipped."""
    skipped = []
    for ckpt, state, _ in candidates(ckpt_dir, map_location):
        if state is None:
            skipped.append(ckpt.path)
            continue
        return ckpt, state, skipped
    return None


def checkpoint_bytes(cfg: RunConfig) -> int:
    """Size of one checkpoint of a run: fp32 weights plus optimiser slots (Adam 2, RMSProp 1),
    counted on networks built on the meta device (no memory)."""
    pair = get_pair(cfg.arch)
    with torch.device("meta"):
        nets = (
            pair.generator(cfg.dim, cfg.padding, cfg.mlp_width),
            pair.critic(cfg.dim, cfg.critic_norm, cfg.padding),
        )
        n = sum(p.numel() for net in nets for p in net.parameters())
    slots = 2 if cfg.optimizer in ADAMS else 1
    return 4 * n * (1 + slots) + 64 * 1024  # plus RNG state, noise and pickling overhead
