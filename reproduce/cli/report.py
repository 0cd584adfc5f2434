"""``reproduce report``: every run of a results directory into tables, figures and a page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..fileio import check_writable
from ..rundir.layout import ResultsDir
from .common import EXIT_OK, Parser, add_results_dir, results_dir, subcommand


def run(args: argparse.Namespace) -> int:
    from ..reporting.frames import build

    results = results_dir(args)
    out = Path(args.out) if args.out else ResultsDir(results).report
    check_writable(out, "--out")
    rep = build(
        results,
        out,
        strict=args.strict,
        matrix=args.matrix,
        progress=lambda s: print(f"  {s} ...", flush=True),
    )
    for w in rep.warnings:
        print(f"warning: {w}", file=sys.stderr)
    counts = rep.summary["status"].map(lambda s: str(s).split()[0]).value_counts()
    print(f"{len(rep.summary)} runs (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    print(f"wrote {len(rep.files)} files to {out}; open {out / 'index.html'}")
    if args.open:
        print((out / "index.html").resolve().as_uri())  # to paste into a browser
    return EXIT_OK


def add_parser(sub: Any) -> Parser:
    """The ``report`` subcommand's arguments."""
    report = subcommand(
        sub,
        "report",
        help="tables, plots and an HTML page for every run of a results directory",
        description="Aggregate every run directory into pandas frames and write the 7x4 "
        "Inception-score table and the throughput table (Markdown, LaTeX booktabs, CSV), "
        "seaborn plots (PNG, PDF) and index.html.",
    )
    add_results_dir(report)
    report.add_argument(
        "--out", default=None, metavar="DIR", help="where to write (default: RESULTS/report)"
    )
    report.add_argument(
        "--matrix",
        default=None,
        metavar="ID",
        help="the matrix whose cells fill the 7x4 grid and its plots: a matrix id or its "
        "prefix, as `status` shows it (default: the LSUN matrix with the most cells)",
    )
    report.add_argument(
        "--open",
        action="store_true",
        help="print the page's file:// URL last, to paste into a browser",
    )
    report.add_argument(
        "--strict",
        action="store_true",
        help="fail on a corrupt or truncated file instead of skipping it with a warning",
    )
    return report
