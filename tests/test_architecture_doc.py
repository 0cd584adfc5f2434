"""ARCHITECTURE.md is a map: every path it names must exist."""

from __future__ import annotations

import re

from .conftest import REPO

PATHLIKE = re.compile(r"`([A-Za-z0-9_./-]+(?:/|\.py|\.md|\.toml))`")


def named_paths(text: str) -> list[str]:
    """The backquoted tokens that name a file or folder (end in / or a known suffix)."""
    return sorted(set(PATHLIKE.findall(text)))


def test_every_path_architecture_md_names_exists():
    text = (REPO / "ARCHITECTURE.md").read_text()
    paths = named_paths(text)
    assert len(paths) >= 30, paths  # the map names the rooms, not a handful of files
    outside = {"../shared/", "RELIABILITY.md"}  # named as living beside the repository
    missing = [p for p in paths if p not in outside and not (REPO / p).exists()]
    assert missing == []


def test_the_path_check_can_fail():
    assert named_paths("see `reproduce/nonexistent.py` and `a/`, not `x`") == [
        "a/",
        "reproduce/nonexistent.py",
    ]
