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

from ..errors import UserError

REPO = Path(__file__).resolve().parents[2]
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
    # the benchmarks use the user's demo judge (built once, cached), not a test-run copy
    from ..evaluation.judge import ENV_DIR, cache_dir

    env.setdefault(ENV_DIR, str(cache_dir()))
    return subprocess.run(cmd, cwd=REPO, env=env).returncode


def default_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------------------------
# derived tables: speed-up over the plain eager port, the paper matrix, packing
# --------------------------------------------------------------------------------------------
PAPER_ITERS = 200_000  # generator iterations of every cell in the paper


def _cell(name: str) -> tuple[str, str] | None:
    """'test_generator_iteration_fast[baseline-wgan-gp-fast-bf16]' -> ('fast-bf16',
    'baseline-wgan-gp'); the kinds are exact, fast, fast-bf16 and the two plain eager ports:
    user (symmetric padding, what a user would run instead) and reference (faithful TF-SAME
    padding)."""
    if "[" not in name:
        return None
    test, param = name.rstrip("]").split("[", 1)
    if test == "test_generator_iteration":
        return "exact", param
    if test == "test_reference_iteration":
        return "reference", param
    if test == "test_user_port_iteration":
        return "user", param
    if test == "test_generator_iteration_fast":
        for mode in ("fast-bf16", "fast"):
            if param.endswith("-" + mode):
                return mode, param[: -len(mode) - 1]
    return None


def speedup_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell: ms per generator iteration of the two plain eager ports and of each mode, and
    the speed-up of each mode over the user port (``{mode}_speedup``: symmetric padding, what a
    user would run instead; the targets refer to it) and over the faithful port
    (``{mode}_speedup_faithful``: the same port with TF-SAME padding, which pays what the
    faithful padding costs)."""
    cells: dict[str, dict[str, float]] = {}
    for name, r in results.items():
        parsed = _cell(name)
        if parsed is not None:
            cells.setdefault(parsed[1], {})[parsed[0]] = r["min"]
    rows = []
    for cell in sorted(cells):
        t = cells[cell]
        user, ref = t.get("user"), t.get("reference")
        row: dict[str, Any] = {"cell": cell, "user_ms": user and 1000 * user,
                               "reference_ms": ref and 1000 * ref}  # fmt: skip
        for mode in ("exact", "fast", "fast-bf16"):
            v = t.get(mode)
            row[f"{mode}_ms"] = v and 1000 * v
            row[f"{mode}_speedup"] = user / v if user and v else None
            row[f"{mode}_speedup_faithful"] = ref / v if ref and v else None
        rows.append(row)
    return rows


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def speedup_table(rows: list[dict[str, Any]]) -> str:
    """One line per cell: both ports' ms, then per mode measured its ms and its speed-ups over
    the user port and over the faithful port."""
    modes = [m for m in ("exact", "fast", "fast-bf16") if any(r[f"{m}_ms"] for r in rows)]
    head = f"{'cell':<28} {'user port':>10} {'faithful':>10}"
    for mode in modes:
        head += f" {mode + ' ms':>13} {'vs user':>8} {'vs faithful':>11}"
    lines = [head]
    for r in rows:
        line = f"{r['cell']:<28} {_ms(r['user_ms'] and r['user_ms'] / 1000):>10} "
        line += f"{_ms(r['reference_ms'] and r['reference_ms'] / 1000):>10}"
        for mode in modes:
            ms = r[f"{mode}_ms"]
            line += (f" {_ms(ms and ms / 1000):>13} {_x(r[f'{mode}_speedup']):>8} "
                     f"{_x(r[f'{mode}_speedup_faithful']):>11}")  # fmt: skip
        lines.append(line)
    return "\n".join(lines)


def paper_matrix_hours(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """GPU-hours of the whole paper matrix (28 cells x 200,000 generator iterations, one seed)
    per kind, from benchmarks run at the paper's width and batch (64, 64) on a GPU, for every
    kind with all 28 cells measured."""
    per_kind: dict[str, list[float]] = {}
    for name, r in results.items():
        parsed = _cell(name)
        ex = r["extra"]
        if parsed is None or ex.get("dim") != 64 or ex.get("batch") != 64:
            continue
        if not on_gpu(str(ex.get("device", ""))):
            continue
        per_kind.setdefault(parsed[0], []).append(r["min"])
    return {k: sum(v) * PAPER_ITERS / 3600 for k, v in per_kind.items() if len(v) == 28}


def packing_rows(results: dict[str, dict[str, Any]], gain: float = 0.10) -> list[dict[str, Any]]:
    """Per architecture: total iterations per second at each k measured, and the recommended
    --cells-per-gpu: the k with the highest total, if it beats one cell by more than ``gain``
    (else 1: packing only adds memory pressure and makes every cell finish later)."""
    by_arch: dict[str, dict[int, float]] = {}
    where: dict[str, tuple[str, Any, Any]] = {}
    for r in results.values():
        ex = r["extra"]
        if "cells" in ex and "it_per_s_total" in ex:
            by_arch.setdefault(ex["arch"], {})[int(ex["cells"])] = float(ex["it_per_s_total"])
            where[ex["arch"]] = (str(ex.get("device", "?")), ex.get("dim"), ex.get("batch"))
    rows = []
    for arch, rates in by_arch.items():
        best = max(rates, key=lambda k: rates[k])
        one = rates.get(1)
        pick = best if one is not None and rates[best] > (1 + gain) * one else 1
        device, dim, batch = where[arch]
        rows.append({"arch": arch, "rates": dict(sorted(rates.items())), "recommended": pick,
                     "device": device, "dim": dim, "batch": batch})  # fmt: skip
    return rows


def on_gpu(device: str) -> bool:
    return device.lower().startswith(("nvidia", "cuda", "amd"))


@dataclass(frozen=True)
class PackingAdvice:
    """A saved benchmark's recommended cells per GPU, and what it was measured on."""

    cells: dict[str, int]  # architecture -> recommended k
    device: str
    dim: int
    batch: int


def recommended_packing(path: Path, flag: str) -> PackingAdvice | None:
    """The packing recommendation of a saved benchmark, or None if it holds no packing
    measured on a GPU (or measurements of several GPUs or sizes)."""
    rows = [r for r in packing_rows(load_results(path, flag)) if on_gpu(r["device"])]
    where = {(r["device"], r["dim"], r["batch"]) for r in rows}
    if len(where) != 1:
        return None
    device, dim, batch = where.pop()
    cells = {r["arch"]: int(r["recommended"]) for r in rows}
    return PackingAdvice(cells, device, int(dim), int(batch))


def packing_table(rows: list[dict[str, Any]]) -> str:
    ks = sorted({k for r in rows for k in r["rates"]})
    head = f"{'architecture (wgan-gp)':<24}" + "".join(f"{f'k={k} it/s':>12}" for k in ks)
    lines = [head + f"{'--cells-per-gpu':>17}"]
    for r in rows:
        cells = "".join(f"{r['rates'][k]:>12.2f}" if k in r["rates"] else f"{'-':>12}" for k in ks)
        lines.append(f"{r['arch']:<24}{cells}{r['recommended']:>17}")
    return "\n".join(lines)


def derived_tables(results: dict[str, dict[str, Any]]) -> str:
    """The speed-up, paper-matrix and packing tables that the results allow (or '')."""
    out = []
    rows = speedup_rows(results)
    if any((r["user_ms"] or r["reference_ms"]) and (r["exact_ms"] or r["fast_ms"]) for r in rows):
        out += ["speed-up per generator iteration over the plain eager port (tests/reference.py)"
                " with symmetric padding (user port: what a user would run instead; the targets"
                " refer to it) and with TF-SAME padding (faithful):",
                speedup_table(rows)]  # fmt: skip
    hours = paper_matrix_hours(results)
    if hours:
        out.append("the paper matrix (28 cells x 200,000 iterations) on this GPU: " + ", ".join(
            f"{k} {v:.1f} GPU-hours" for k, v in sorted(hours.items())))  # fmt: skip
    packing = packing_rows(results)
    if packing:
        out += ["packing (total generator iterations per second of k concurrent cells):",
                packing_table(packing)]  # fmt: skip
    board = next((r["extra"] for n, r in results.items() if "tensorboard_logging" in n), None)
    if board and board.get("overhead_fraction") is not None:
        out.append(
            f"TensorBoard logging at the default cadences: {board['overhead_fraction']:.3%} of "
            f"a baseline WGAN-GP iteration ({1000 * board['board_seconds_per_iteration']:.3f} "
            f"ms per iteration); the event file of a 200,000-iteration run: about "
            f"{board['bytes_per_200k'] / 1e6:,.0f} MB"
        )
    return "\n\n".join(out)
