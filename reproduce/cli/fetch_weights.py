"""``reproduce fetch-weights``: stage the Inception weights for machines without internet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import check_writable
from .common import EXIT_OK, Parser, subcommand


def run(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import default_cache_dir, stage_weights

    cache = Path(args.cache) if args.cache else default_cache_dir()
    check_writable(cache, "--cache")
    try:
        weights = stage_weights(cache, args.url)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot download the Inception weights: {type(e).__name__}: {e}") from None
    print(f"staged {weights.path}")
    print(f"sha256 {weights.sha256}")
    print(
        f"use it with: --inception-weights {weights.path}  (or export "
        f"REPRODUCE_INCEPTION_WEIGHTS={weights.path})"
    )
    return EXIT_OK


def add_parser(sub: Any) -> Parser:
    """The ``fetch-weights`` subcommand's arguments."""
    fetch = subcommand(
        sub,
        "fetch-weights",
        help="download the Inception weights into a cache directory (run on a login node)",
        description="Stage torch-fidelity's TF-compatible Inception weights for machines without "
        "internet: download, record the sha256 beside the file, check that they load.",
    )
    fetch.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="directory to put the file in (default: torch-fidelity's cache, "
        "$TORCH_HOME/hub/checkpoints)",
    )
    fetch.add_argument(
        "--url",
        default=None,
        help="download from this URL instead (a mirror, or file:///path); default: "
        "$REPRODUCE_INCEPTION_URL, else torch-fidelity's release URL",
    )
    return fetch
