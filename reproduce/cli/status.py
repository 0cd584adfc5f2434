"""``reproduce status``: the grid of every matrix under a results directory (no torch)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .common import EXIT_OK, Parser, add_results_dir, results_dir, subcommand

if TYPE_CHECKING:
    from ..results import LoadedRun


def run(args: argparse.Namespace) -> int:
    from ..dispatch import slurm_queue
    from ..matrix import cell_state, grid_text, load_manifests, waits_on_slurm
    from ..results import load_run

    results = results_dir(args)
    manifests = load_manifests(results)
    if not manifests:
        print(f"no matrix in {results} (start one with: python -m reproduce matrix ...)")
        return EXIT_OK
    uses_slurm = any(waits_on_slurm(results / c["run_id"]) for m in manifests for c in m["cells"])
    queue = slurm_queue() if uses_slurm else None
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
                cells[(c["arch"], c["procedure"])] = (st, _status_score(run))
                counts[st.state] = counts.get(st.state, 0) + 1
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            print(f"matrix {m['matrix_id']} ({m['experiment']}; {desc}), seed {seed}: {summary}")
            print(grid_text(cells))
            print()
    if uses_slurm and queue is None:
        print("note: squeue did not answer; queued SLURM cells may show as pending")
    return EXIT_OK


def _status_score(run: LoadedRun) -> str | None:
    """The newest score of a cell for the status grid (``IS 6.12`` or ``judge 5.43 7/8``),
    and its verdict once it has one."""
    from ..results import IS_MEAN

    latest = run.latest
    bits = []
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
    return status
