"""``reproduce prepare-data``: LSUN LMDB or image folder into the 64x64 training cache."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from .common import EXIT_OK, Parser, subcommand


def prepare_defaults() -> Any:
    from ..data.prepare import Options

    return Options()


def run(args: argparse.Namespace) -> int:
    from ..data.imagecache import iter_summary
    from ..data.prepare import Options, prepare

    opts = Options(
        limit=args.limit,
        val_fraction=args.val_fraction,
        max_skipped=args.max_skipped,
        workers=prepare_defaults().workers if args.workers is None else args.workers,
        progress=args.progress,
        shard_rows=args.shard_rows,
    )
    t0 = time.monotonic()
    done = prepare(Path(args.source), Path(args.out), opts)
    if done.resumed_shards < 0:
        print(f"{done.path} is already prepared from this source with these options")
    else:
        print(f"prepared {done.path} in {time.monotonic() - t0:.1f} s")
    for line in iter_summary(done.manifest):
        print(line)
    print(f"train on it with: --data {done.path}")
    return EXIT_OK


def add_parser(sub: Any) -> Parser:
    """The ``prepare-data`` subcommand's arguments."""
    prep = subcommand(
        sub,
        "prepare-data",
        help="turn the LSUN LMDB (or a folder of images) into the 64x64 training cache, once",
        description="Decode, convert to RGB, resize the shorter side to 64 (antialiased bicubic) "
        "and centre-crop 64x64 every image of an LSUN LMDB or an image folder, in parallel, into "
        "a memory-mappable uint8 cache with a manifest. Interrupted, it resumes when re-run.",
    )
    prep.add_argument(
        "--source",
        required=True,
        metavar="PATH",
        help="an LSUN LMDB directory (holding data.mdb) or a folder of images",
    )
    prep.add_argument("--out", required=True, metavar="PATH", help="the cache directory to write")
    prep.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="use only the first N images in key order (default: all)",
    )
    prep.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction as a validation split, chosen by a hash of "
        "each image's key (Figure 5a; default: 0)",
    )
    prep.add_argument(
        "--max-skipped",
        type=float,
        default=prepare_defaults().max_skipped,
        metavar="F",
        help="reject the source when more than this fraction of its "
        "images is unreadable or under 64 px (default: %(default)s)",
    )
    prep.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="decoding processes (default: one per available CPU core)",
    )
    prep.add_argument(
        "--shard-rows",
        type=int,
        default=prepare_defaults().shard_rows,
        metavar="N",
        help="images per unit of work and of resumption (default: %(default)s)",
    )
    prep.add_argument("--no-progress", dest="progress", action="store_false",
                      help="no progress bar")  # fmt: skip
    return prep
