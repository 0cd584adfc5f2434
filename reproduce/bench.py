"""``python -m reproduce bench``: run the pytest-benchmark suite (tests/benchmarks), save its
JSON, and compare against a saved baseline with a failure threshold.

The comparison is per benchmark, on the minimum time over rounds (the least noisy statistic
of a fixed workload): ratio = new / baseline; a ratio above ``1 + fail_above`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "tests" / "benchmarks"


def parse_threshold(text: str) -> float:
    """'10%' or '10' -> 0.10."""
    try:
        value = float(text.strip().rstrip("%"))
    except ValueError:
        raise UserError(f"--fail-above: not a percentage: {text!r} (e.g. 10%)") from None
    if value <= 0:
        raise UserError(f"--fail-above: must be positive, got {text!r}")
    return value / 100.0


def load_results(path: Path, flag: str) -> dict[str, dict[str, Any]]:
    """pytest-benchmark JSON -> {benchmark name: {min, mean, extra_info...}}."""
    try:
        data = json.loads(path.read_text())
        return {
            b["fullname"].split("::", 1)[-1]: {
                "min": float(b["stats"]["min"]),
                "extra": b.get("extra_info", {}),
            }
            for b in data["benchmarks"]
        }
    except FileNotFoundError:
        raise UserError(f"{flag}: {path} does not exist") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{flag}: {path} is not a pytest-benchmark JSON file ({e})") from None


@dataclass(frozen=True)
class Row:
    name: str
    new: float | None  # seconds (min over rounds)
    base: float | None

    @property
    def ratio(self) -> float | None:
        return self.new / self.base if self.new and self.base else None


def compare(
    new: dict[str, dict[str, Any]], base: dict[str, dict[str, Any]], fail_above: float
) -> tuple[list[Row], list[Row]]:
    """All rows, and those slower than the threshold."""
    rows = [
        Row(name, new.get(name, {}).get("min"), base.get(name, {}).get("min"))
        for name in sorted(set(new) | set(base))
    ]
    failed = [r for r in rows if r.ratio is not None and r.ratio > 1.0 + fail_above]
    return rows, failed


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{1000 * v:,.2f}"


def results_table(results: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'benchmark':<58} {'min ms':>10} {'TFLOP/s':>9} {'MFU':>7} {'img/s':>10}"]
    for name in sorted(results):
        r = results[name]
        ex = r["extra"]
        tf, mfu, rate = ex.get("tflops"), ex.get("mfu"), ex.get("images_per_s")
        tf_s = "-" if tf is None else f"{tf:.3f}"
        mfu_s = "-" if mfu is None else f"{mfu:.1%}"
        rate_s = "-" if rate is None else f"{rate:,.0f}"
        lines.append(f"{name:<58} {_ms(r['min']):>10} {tf_s:>9} {mfu_s:>7} {rate_s:>10}")
    return "\n".join(lines)


def ratio_table(rows: list[Row], fail_above: float) -> str:
    lines = [f"{'benchmark':<58} {'baseline ms':>12} {'new ms':>10} {'ratio':>7}"]
    for r in rows:
        ratio = "-" if r.ratio is None else f"{r.ratio:.3f}"
        flag = "  SLOWER" if r.ratio is not None and r.ratio > 1 + fail_above else ""
        note = "  (new)" if r.base is None else "  (not run)" if r.new is None else ""
        lines.append(f"{r.name:<58} {_ms(r.base):>12} {_ms(r.new):>10} {ratio:>7}{flag}{note}")
    return "\n".join(lines)


def run_suite(out: Path, select: str | None) -> int:
    cmd = [sys.executable, "-m", "pytest", str(SUITE), "-m", "benchmark_suite", "-n", "0",
           "-q", "-p", "no:cacheprovider", f"--benchmark-json={out}"]  # fmt: skip
    if select:
        cmd += ["-k", select]
    # a clean pytest environment: inherited xdist variables (when bench itself runs under a
    # pytest-xdist worker) would make pytest-benchmark disable itself
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def default_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
