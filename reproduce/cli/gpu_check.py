"""``reproduce gpu-check``: the prepared, time-boxed check of every CUDA path."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fileio import check_writable
from .common import EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, Parser, subcommand


def run(args: argparse.Namespace) -> int:
    from ..speed import gpucheck

    s = gpucheck.settings_from_args(args)
    out = Path(args.out) if args.out else gpucheck.default_out(s)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out: {out} exists and is not an empty directory")
    check_writable(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check on {s.device} (width {s.dim}, batch {s.batch}, budget {s.budget_s:.0f} s) "
          f"-> {out}", flush=True)  # fmt: skip
    try:
        report = gpucheck.run(s, out, echo=lambda line: print(line, flush=True))
    except gpucheck.Stopped as e:  # no section left running; what was measured is kept
        print(f"stopped by {e}: every section process ended; what was measured is in "
              f"{out / gpucheck.FILE_JSON}", flush=True)  # fmt: skip
        return EXIT_TEMPFAIL
    bad = [n for n, r in report["sections"].items() if r["status"] != "ok"]
    print(f"wrote {out / gpucheck.FILE_JSON} and {out / gpucheck.FILE_MD}"
          + (f"; not ok: {', '.join(bad)}" if bad else ""))  # fmt: skip
    return EXIT_OK if not bad else EXIT_FAILED


def add_parser(sub: Any) -> Parser:
    """The ``gpu-check`` subcommand's arguments."""
    check = subcommand(
        sub,
        "gpu-check",
        help="one prepared, time-boxed run of every CUDA path (for a short GPU loan)",
        description="Run six time-boxed sections in order of value: the CUDA-only tests, "
        "step times (plain eager port vs exact vs fast), a real train/SIGTERM/resume run with "
        "the CUDA-graph bit check, Inception-score throughput, packing, and the paper "
        "matrix's projected device-hours. Writes OUT/gpu-check.json and OUT/gpu-check.md "
        "after every section. A section that overruns its box is killed and recorded; the "
        "others still run.",
    )
    check.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="where to write (default: results/gpu-check/TIMESTAMP-DEVICE)",
    )
    check.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="wall time for all sections (default: 540; --smoke: 240)",
    )
    check.add_argument(
        "--device",
        default=None,
        choices=("auto", "cuda", "cpu"),
        help="default: $BENCH_DEVICE, else cuda when available",
    )
    check.add_argument(
        "--dim",
        type=int,
        default=None,
        help="network width (default: 64 on a GPU, 16 on a CPU, 8 with --smoke)",
    )
    check.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size (default: 64 on a GPU, 16 on a CPU, 4 with --smoke)",
    )
    check.add_argument(
        "--sections",
        default=None,
        metavar="A,B",
        help="only these sections (default: all six, in their order)",
    )
    check.add_argument("--smoke", action="store_true",
                       help="the test suite's form: tiny sizes, seconds per section")  # fmt: skip
    return check
