"""``reproduce bench``: the pytest-benchmark suite (``reproduce.speed.bench``), saved, compared."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import check_writable
from ..rundir.layout import ResultsDir
from .common import EXIT_FAILED, EXIT_OK, Parser, subcommand


def run(args: argparse.Namespace) -> int:
    from ..speed import bench

    threshold = bench.parse_threshold(args.fail_above)
    base = bench.load_results(Path(args.compare), "--compare") if args.compare else None
    if not bench.SUITE.is_dir():
        raise UserError(f"bench: the benchmark suite {bench.SUITE} is missing (use a checkout)")
    name = args.name or bench.default_name()
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"--name: not a valid file name: {name!r}")
    out_dir = ResultsDir(Path(args.results)).benchmarks
    check_writable(out_dir, "--results")
    out = out_dir / f"{name}.json"
    if out.exists():
        raise UserError(f"--name: {out} exists; choose another name")
    out_dir.mkdir(parents=True, exist_ok=True)
    code = bench.run_suite(out.absolute(), args.select)  # pytest runs in the checkout
    if not out.is_file():
        print(f"bench: pytest exited {code} without results", file=sys.stderr)
        return EXIT_FAILED
    new = bench.load_results(out, "bench")
    print(bench.results_table(new))
    derived = bench.derived_tables(new)
    if derived:
        print()
        print(derived)
    print(f"saved {out}")
    if base is None:
        return EXIT_OK if code == 0 else EXIT_FAILED
    rows, failed = bench.compare(new, base, threshold)
    print()
    print(bench.ratio_table(rows, threshold))
    if failed:
        print(f"{len(failed)} benchmark(s) slower than the baseline by more than "
              f"{threshold:.0%}: {', '.join(r.name for r in failed)}")  # fmt: skip
        return EXIT_FAILED
    return EXIT_OK if code == 0 else EXIT_FAILED


def add_parser(sub: Any) -> Parser:
    """The ``bench`` subcommand's arguments."""
    bench = subcommand(
        sub,
        "bench",
        help="run the speed benchmarks (pytest-benchmark), save them, compare with a baseline",
        description="Run tests/benchmarks (one full generator iteration of every cell, the "
        "Inception-score evaluation, the data path), save the pytest-benchmark JSON under "
        "RESULTS/benchmarks/, print times with TFLOP/s and MFU, and with --compare print the "
        "per-benchmark ratio to a saved run, failing (exit 1) above --fail-above.",
    )
    bench.add_argument(
        "-k",
        dest="select",
        default=None,
        metavar="EXPR",
        help="only benchmarks matching this pytest -k expression",
    )
    bench.add_argument(
        "--compare",
        default=None,
        metavar="BASELINE.json",
        help="a saved benchmark JSON to compare with",
    )
    bench.add_argument(
        "--fail-above",
        default="10%",
        metavar="PCT",
        help="fail when a benchmark is this much slower than the baseline (default: 10%%)",
    )
    bench.add_argument(
        "--results",
        default="results",
        metavar="DIR",
        help="results directory; the JSON goes to DIR/benchmarks/NAME.json",
    )
    bench.add_argument("--name", default=None,
                       help="name of the saved run (default: a timestamp)")  # fmt: skip
    return bench
