"""``reproduce status``: the grid of every matrix under a results directory (no torch)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from .common import EXIT_OK, Parser, add_results_dir, results_dir, subcommand

if TYPE_CHECKING:
    from ..rundir.rundir import LoadedRun


WATCH_MIN_S, WATCH_MAX_S = 0.1, 86400.0  # below: a busy loop; above: time.sleep overflows


def run(args: argparse.Namespace) -> int:
    from ..matrix.cells import load_manifests

    results = results_dir(args)
    if args.watch is not None and not (WATCH_MIN_S <= args.watch <= WATCH_MAX_S):  # nan too
        raise UserError(
            f"--watch: seconds between redraws, from {WATCH_MIN_S:g} to {WATCH_MAX_S:g} "
            f"(a day), got {args.watch:g}"
        )
    if not load_manifests(results):
        print(f"no matrix in {results} (start one with: python -m reproduce matrix ...)")
        return EXIT_OK
    if args.watch is None:
        print(_view(results)[0], end="")
        return EXIT_OK
    return _watch(results, args.watch)


def _watch(results: Path, every: float) -> int:
    """Redraw the grids in place every ``every`` seconds (a terminal), or print them again
    when they change (anything else: plain lines, no escape codes), until every cell has
    finished or Ctrl-C."""
    tty = sys.stdout.isatty()
    shown = None
    try:
        while True:
            text, finished = _view(results)
            if tty:
                stamp = time.strftime("%H:%M:%S")
                footer = f"every {every:g} s ({stamp}); Ctrl-C ends"
                sys.stdout.write(f"\x1b[H\x1b[2J{text}{footer}\n")
            elif text != shown:
                sys.stdout.write(f"-- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{text}")
            sys.stdout.flush()
            shown = text
            if finished:
                print("every cell has finished")
                return EXIT_OK
            time.sleep(every)
    except KeyboardInterrupt:
        print()
        return EXIT_OK


def _view(results: Path) -> tuple[str, bool]:
    """The grids of every matrix under ``results`` (one per seed), and whether every cell has
    finished (completed, diverged or failed)."""
    from ..matrix.cells import cell_state, grid_text, load_manifests, waits_on_slurm
    from ..matrix.dispatch import slurm_queue
    from ..rundir.rundir import load_run

    manifests = load_manifests(results)
    uses_slurm = any(waits_on_slurm(results / c["run_id"]) for m in manifests for c in m["cells"])
    queue = slurm_queue() if uses_slurm else None
    out, finished = [], True
    for m in manifests:
        shared = m.get("shared", {})
        desc = ", ".join(
            f"{k}={shared[k]}"
            for k in ("dim", "batch_size", "iters", "hparams", "dataset")
            if k in shared
        )
        for seed in sorted({c["seed"] for c in m["cells"]}):
            cells = {}
            counts: dict[str, int] = {}
            for c in m["cells"]:
                if c["seed"] != seed:
                    continue
                run = load_run(results / c["run_id"])
                st = cell_state(run, queue)
                cells[(c["arch"], c["procedure"])] = (st, _status_score(run, st.state))
                counts[st.state] = counts.get(st.state, 0) + 1
                finished &= st.state in ("completed", "diverged", "failed")
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            title = f"matrix {m['matrix_id']} ({m['experiment']}; {desc}), seed {seed}"
            out.append(f"{title}: {summary}")
            out += [grid_text(cells), ""]
    if uses_slurm and queue is None:
        out.append("note: squeue did not answer; queued SLURM cells may show as pending")
    # text from run files (a verdict, a message) may hold terminal escape codes: shown as ?
    return _printable("\n".join(out) + "\n"), finished


def _printable(text: str) -> str:
    return "".join(c if c == "\n" or c.isprintable() else "?" for c in text)


def _status_score(run: LoadedRun, state: str) -> str | None:
    """The newest score of a cell for the status grid (``IS 6.12`` or ``judge 5.43 7/8``),
    and its verdict once it has one; a running cell's last critic loss first (``D 1.23``)."""
    from ..evaluation.keys import IS_MEAN

    latest = run.latest
    bits = []
    loss = run.last.get("critic_loss")
    if state == "running" and isinstance(loss, int | float):
        bits.append(f"D {loss:.3g}")
    if isinstance(latest.get(IS_MEAN), int | float):
        name = "judge" if latest.get("judge") == "demo-judge" else "IS"
        bits.append(f"{name} {latest[IS_MEAN]:.2f}")
        if "modes_covered" in latest:
            bits.append(f"{latest['modes_covered']}/{latest['modes_total']}")
    verdict = run.verdict.get("verdict")
    if isinstance(verdict, str) and verdict not in ("incomplete", "diverged", "failed"):
        bits.append(verdict)
    return " ".join(bits) or None


def add_parser(sub: Any) -> Parser:
    """The ``status`` subcommand's arguments."""
    status = subcommand(
        sub,
        "status",
        help="the 7x4 grid of every matrix in a results directory, with each cell's state",
        description="Show each matrix (per seed) as the paper's 7x4 grid: pending, queued, "
        "running (progress, it/s, ETA), partial, completed, diverged, failed. Safe to run while "
        "a matrix is training, locally or on SLURM.",
    )
    add_results_dir(status)
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh the grids in place every SECONDS (default 2) until every cell has "
        "finished, or Ctrl-C; when not on a terminal, print them again when they change",
    )
    return status
