"""Expand experiments into runs, find each run's state, and summarise a matrix.

``expand`` is pure: (experiment, selection, shared options, dataset fingerprint) -> the
resolved ``RunConfig`` of every cell, in the experiment's order, with duplicates refused.
Run ids are deterministic, so a second invocation finds the same runs and skips, resumes or
starts each according to its state on disk.
"""

from __future__ import annotations

import hashlib
import html
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from architectures import ALL_PAIRS, PAIRS

from ..config.run import RunConfig, resolve_run_config
from ..errors import UserError
from ..evaluation.keys import FID, IS_MEAN, IS_STD, KID_MEAN
from ..fileio import atomic_write_bytes, atomic_write_json, count, finite, read_json
from ..gan.procedures import PROCEDURES
from ..registry import Registry
from ..rundir.layout import ResultsDir
from ..rundir.lease import is_live, read_holder
from ..rundir.rundir import LoadedRun, RunDir, judge_name, load_run
from .experiments import Selection, get_experiment


@dataclass(frozen=True)
class Profile:
    description: str
    options: Mapping[str, Any]  # defaults for options.OPTIONS keys; explicit flags override
    needs_data: bool = False
    cpu_workers: int = 1  # cells at once on a machine without GPUs (0: one per usable CPU)
    archs: tuple[str, ...] | None = None  # the rows when --arch is not given (None: all)


PROFILES: Registry[Profile] = Registry("profile")
# The paper's LSUN experiment (SPEC.md B): batch 64, DIM 64, 200,000 generator iterations.
PROFILES.register(
    "paper",
    Profile(
        "the paper's settings: 200,000 generator iterations, batch 64, width 64 (give --data)",
        {"dim": 64, "batch_size": 64, "iters": 200_000},
        needs_data=True,
    ),
)
# Small enough that all 28 cells finish in minutes on a 2-core CPU, on the built-in data;
# every cell is scored by the demo judge (one periodic evaluation and the final one).
PROFILES.register(
    "demo",
    Profile(
        "all 28 cells on the built-in demo data at width 8, batch 16, 12 iterations, scored "
        "by the demo judge (CPU, minutes)",
        {
            "data": "demo",
            "dim": 8,
            "batch_size": 16,
            "iters": 12,
            "log_every": 4,
            "sample_every": 0,
            "checkpoint_every": 60.0,
            "count_flops": False,  # seconds per cell, more than the demo's training
            "eval_every": 6,
        },
        cpu_workers=0,
    ),
)
# Figure 2's claim at the scale where the baseline pair trains on a 2-core CPU (the showcase's
# data, width and batch; docs/proof-of-life.md): the four rows whose 16 cells fit about two
# hours on 2 cores at 5,000 iterations (--dry-run prints the estimate); --arch adds the others.
CLAIMS_ROWS = ("baseline", "constant-filters", "mlp-generator", "no-norm")
PROFILES.register(
    "claims",
    Profile(
        "Figure 2's claim on a CPU: the first four rows (baseline, constant-filters, "
        "mlp-generator, no-norm) x 4 procedures on the built-in shapes data at width 16, batch "
        "16, 5,000 iterations, judged by the demo judge (about 2 h on 2 cores; --arch for others)",
        {
            "data": "shapes",
            "dim": 16,
            "batch_size": 16,
            "iters": 5000,
            "log_every": 100,
            "sample_every": 500,
            "checkpoint_every": 300.0,
            "count_flops": False,
            "eval_every": 500,
            "eval_samples": 1000,
            "final_eval_samples": 2000,
        },
        cpu_workers=0,
        archs=CLAIMS_ROWS,
    ),
)


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError as e:
        raise UserError(f"--profile: {e.args[0]}") from None


def expand(
    experiment: str,
    selection: Selection,
    shared: Mapping[str, Any],
    *,
    dataset: str,
    data_fingerprint: str,
) -> list[RunConfig]:
    """Resolve every cell of an experiment. Raises UserError for an invalid option of any
    cell and for two cells that resolve to the same run id."""
    try:
        exp = get_experiment(experiment)
    except KeyError as e:
        raise UserError(f"--experiment: {e.args[0]}") from None
    cells = exp.build(selection)
    configs: list[RunConfig] = []
    seen: dict[str, tuple[str, str, int]] = {}
    for cell in cells:
        cfg = resolve_run_config(
            {**shared, **cell.choices()}, dataset=dataset, data_fingerprint=data_fingerprint
        )
        key = (cell.arch, cell.procedure, cell.seed)
        if cfg.run_id in seen:
            raise UserError(
                f"duplicate cells: {seen[cfg.run_id]} and {key} both resolve to run {cfg.run_id}"
            )
        seen[cfg.run_id] = key
        configs.append(cfg)
    return configs


def matrix_id(configs: Sequence[RunConfig]) -> str:
    """Identifies one matrix (its set of runs), for its manifest and summary files."""
    h = hashlib.sha256("\n".join(sorted(c.run_id for c in configs)).encode())
    return h.hexdigest()[:10]


def write_manifest(
    results: Path, experiment: str, configs: Sequence[RunConfig], run_dirs: Sequence[Path]
) -> Path:
    """``results/matrices/<id>.json``: the cells of a matrix, so that ``status`` can show the
    ones that have not started yet."""
    mid = matrix_id(configs)
    path = ResultsDir(results).manifest(mid)
    atomic_write_json(
        path,
        {
            "matrix_id": mid,
            "experiment": experiment,
            "cells": [
                {
                    "arch": c.arch,
                    "procedure": c.procedure,
                    "seed": c.seed,
                    "run_id": c.run_id,
                    "run_dir": str(d),
                }
                for c, d in zip(configs, run_dirs, strict=True)
            ],
            "shared": {
                k: v
                for k, v in configs[0].to_dict().items()
                if k not in ("arch", "procedure", "seed")
            }
            if configs
            else {},
        },
    )
    return path


# --------------------------------------------------------------------------------------------
# states
# --------------------------------------------------------------------------------------------
@dataclass
class CellState:
    state: str  # pending | queued | running | partial | completed | diverged | failed
    iteration: int = 0
    iters: int = 0
    it_per_s: float | None = None
    detail: str = ""
    job_id: str | None = None

    @property
    def eta_s(self) -> float | None:
        if self.it_per_s and self.iters > self.iteration:
            return (self.iters - self.iteration) / self.it_per_s
        return None

    @property
    def runnable(self) -> bool:
        """Should a matrix invocation start (or resume) this cell?"""
        return self.state in ("pending", "partial", "failed")


SLURM_ACTIVE = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "SIGNALING",
    "STAGE_OUT",
}


def waits_on_slurm(run_dir: Path) -> bool:
    """Whether the run's state may depend on the SLURM queue: submitted to SLURM and not
    finished. Local and debug cells, and finished ones, never ask squeue."""
    rd = RunDir(run_dir)
    if rd.read_submission().get("executor") != "slurm":
        return False
    status = rd.read_status() or {}
    return status.get("state") not in ("completed", "diverged")


def cell_state(run: Path | LoadedRun, queue: Mapping[str, str] | None = None) -> CellState:
    """The state of one run from its directory (and the SLURM queue, when given)."""
    rd = run.dir if isinstance(run, LoadedRun) else RunDir(run)
    status = run.status if isinstance(run, LoadedRun) else rd.read_status() or {}
    submission = run.submission if isinstance(run, LoadedRun) else rd.read_submission()
    st = CellState(
        state="pending",
        iteration=count(status.get("iteration")),
        iters=count(status.get("iters")),
        it_per_s=finite(status.get("it_per_s")),
    )
    st.job_id = submission.get("job_id")
    state = status.get("state")
    if state in ("completed", "diverged"):
        st.state = state
        if state == "diverged":
            st.detail = f"at iteration {count(status.get('diverged_at'), -1)}"
        return st
    if is_live(read_holder(rd.path)):
        st.state = "running"
        return st
    if queue is not None and submission.get("executor") == "slurm":
        slurm_state = queue.get(str(submission.get("job_id")))
        if slurm_state in SLURM_ACTIVE:
            st.state = (
                "queued" if slurm_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") else "running"
            )
            st.detail = f"SLURM {slurm_state} job {submission['job_id']}"
            return st
    if state == "failed":
        st.state = "failed"
        st.detail = str(status.get("message", ""))[:500]
    elif state in ("running", "interrupted") or rd.checkpoints_dir.exists():
        st.state = "partial"  # interrupted (signal, kill, preemption): resumes when run again
    return st


# --------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------
SUMMARY_COLUMNS = (
    "arch",
    "procedure",
    "seed",
    "mode",
    "status",
    "iterations",
    "it_per_s",
    "images_per_s",
    "tflops",
    "mfu",
    "train_seconds",
    "setup_seconds",
    "critic_loss",
    "wdist",
    "generator_loss",
    "judge",
    "is_mean",
    "is_std",
    "real_is",
    "fid",
    "kid",
    "modes",
    "verdict",
    "run_id",
)


def summary_rows(configs: Sequence[RunConfig], run_dirs: Sequence[Path]) -> list[dict[str, Any]]:
    rows = []
    for cfg, run_dir in zip(configs, run_dirs, strict=True):
        run = load_run(run_dir)
        st = cell_state(run)
        status, last, m, verdict = run.status, run.last, run.latest, run.verdict
        secs = status.get("train_seconds")
        it_s = st.it_per_s
        rows.append(
            {
                "arch": cfg.arch,
                "procedure": cfg.procedure,
                "seed": cfg.seed,
                "mode": cfg.mode,
                "status": st.state + (f" {st.detail}" if st.state == "diverged" else ""),
                "iterations": f"{st.iteration}/{cfg.iters}",
                "it_per_s": it_s,
                # real images consumed per second: n_critic batches per generator iteration
                "images_per_s": it_s * cfg.n_critic * cfg.batch_size if it_s else None,
                "tflops": status.get("tflops"),
                "mfu": status.get("mfu"),
                "train_seconds": secs,
                "setup_seconds": status.get("setup_seconds"),
                "critic_loss": last.get("critic_loss"),
                "wdist": last.get("wdist"),
                "generator_loss": last.get("generator_loss"),
                # which network scored is_mean/fid/kid: inception, or the demo judge (whose
                # score is the Inception score's analogue over the demo data's 8 modes)
                "judge": judge_name(m),
                "is_mean": m.get(IS_MEAN),
                "is_std": m.get(IS_STD),
                # the real data's score under the same judge: what is_mean is compared with
                "real_is": m.get("real_" + IS_MEAN),
                "fid": m.get(FID),
                "kid": m.get(KID_MEAN),
                "modes": (
                    f"{m['modes_covered']}/{m['modes_total']}" if "modes_covered" in m else None
                ),
                "verdict": verdict.get("verdict"),
                "run_id": run_dir.name,
            }
        )
    return rows


def format_value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}"
    return str(v)


def md_cell(text: str) -> str:
    """A Markdown table cell: HTML-escaped (Markdown renders raw HTML), pipes escaped, one
    line (strings from files under --results reach these tables)."""
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(md_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_cell(format_value(r.get(c))) for c in columns) + " |"
              for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_summary(
    results: Path, configs: Sequence[RunConfig], run_dirs: Sequence[Path]
) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``results/matrices/<id>-summary.{md,csv}`` (every column); returns the markdown
    path and the rows (``terminal_summary`` prints them)."""
    import pandas as pd

    rows = summary_rows(configs, run_dirs)
    mid = matrix_id(configs)
    md = markdown_table(rows, SUMMARY_COLUMNS)
    md_path = ResultsDir(results).summary(mid, "md")
    atomic_write_bytes(md_path, md.encode())
    csv = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS)).to_csv(index=False)
    atomic_write_bytes(ResultsDir(results).summary(mid, "csv"), csv.encode())
    return md_path, rows


# under this many generator iterations no cell is expected to train: a smoke run of the pipeline
SMOKE_ITERS = 100
# where the settings that do train on a CPU are measured, and the command that shows them
TRAINED_ELSEWHERE = "docs/proof-of-life.md (python -m reproduce figures showcase)"


def verdict_banner(verdicts: Sequence[Any], iters: Sequence[Any]) -> str | None:
    """One line saying what a matrix's verdicts mean: how many judged cells trained at their
    length, that a run this short is a smoke run, and where trained cells are when none
    here is. None before any cell has a verdict. The terminal summary ends with it and the
    report's main page opens with it."""
    judged = [v for v in verdicts if isinstance(v, str) and v]
    lengths = sorted({int(n) for n in iters if isinstance(n, int | float) and n == n and n > 0})
    if not judged or not lengths:
        return None
    trained = judged.count("trained")
    span = f"{lengths[0]:,}" + (f"-{lengths[-1]:,}" if len(lengths) > 1 else "")
    text = f"{trained} of {len(judged)} judged cells trained, at {span} generator iterations"
    if lengths[-1] < SMOKE_ITERS:
        text += f": a smoke run of the pipeline ({span} iterations train nothing)"
    if trained == 0 or lengths[-1] < SMOKE_ITERS:
        text += f"; trained cells on a CPU: {TRAINED_ELSEWHERE}"
    return text


def summary_iters(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Each summary row's configured length (its ``iterations`` column is ``done/iters``)."""
    out = []
    for r in rows:
        tail = str(r.get("iterations") or "").rpartition("/")[2]
        if tail.isdigit():
            out.append(int(tail))
    return out


def terminal_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The summary for a terminal: one line per cell in at most 100 columns (the paper
    profile's longest is 96) with its state, iterations, rate, score, Fréchet distance, modes
    and verdict; the files hold every column. Plain text: strings from run files are made one
    line each and cut to their column."""
    judges = {r.get("judge") for r in rows} - {None}
    demo = judges == {"demo-judge"}
    seeds = len({r.get("seed") for r in rows}) > 1
    header = ("cell", "status", "iterations", "it/s", "IS", "FD" if demo else "FID", "modes",
              "verdict")  # fmt: skip
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        cell = f"{r['arch']}/{r['procedure']}" + (f" s{r['seed']}" if seeds else "")
        if r.get("mode", "exact") != "exact":
            cell += f" [{r['mode']}]"
        is_mean, fid = r.get("is_mean"), r.get("fid")
        table.append((
            cell,
            str(r.get("status") or "-").split()[0],  # diverged's iteration is in iterations
            str(r.get("iterations") or "-"),
            f"{r['it_per_s']:.3g}" if isinstance(r.get("it_per_s"), float) else "-",
            f"{is_mean:.2f}" if isinstance(is_mean, int | float) else "-",
            f"{fid:.1f}" if isinstance(fid, int | float) else "-",
            str(r.get("modes") or "-"),
            str(r.get("verdict") or "-"),
        ))  # fmt: skip
    table = [tuple(" ".join(c.split())[:28] for c in row) for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}  # numbers are right-aligned
    lines = [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in table
    ]  # fmt: skip
    if demo:
        # the data's own score, as measured (one value unless cells used other references)
        real = sorted({round(v, 2) for r in rows if isinstance(v := r.get("real_is"), float)})
        own = ""
        if real:
            own = f"; the data's own: {real[0]:.2f}" + (f"-{real[-1]:.2f}" if real[1:] else "")
        lines.append(f"IS and FD: the demo judge's (its IS is out of 8{own})")
    banner = verdict_banner([r.get("verdict") for r in rows], summary_iters(rows))
    if banner:
        lines += textwrap.wrap(banner, 100, break_on_hyphens=False, break_long_words=False)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the 7x4 grid for `status`
# --------------------------------------------------------------------------------------------
def _short(st: CellState, metric: str | None) -> str:
    if st.state == "running":
        pct = f"{100 * st.iteration / st.iters:.0f}%" if st.iters else ""
        rate = f" {st.it_per_s:.2f}it/s" if st.it_per_s else ""
        eta = f" ETA {duration_text(st.eta_s)}" if st.eta_s is not None else ""
        return f"running {pct}{rate}{eta}" + (f" {metric}" if metric else "")
    text = st.state
    if st.state == "partial" and st.iters:
        text += f" {st.iteration}/{st.iters}"
    if st.state == "diverged":
        text += f" @{st.detail.split()[-1]}"
    if metric:
        text += f" {metric}"
    return text


def duration_text(s: float | None, spaced: bool = False) -> str:
    """A duration for the terminal: compact (``1h02m``, ``3m07s``, ``42s``; whole seconds
    cut) for the summary's columns and the live lines, or ``spaced`` (``1 h 02 min``,
    ``3 min 07 s``; rounded) for sentences such as the dry-run's estimate."""
    if s is None:
        return "-"
    if spaced:
        m, sec = divmod(round(s), 60)
        h, m = divmod(m, 60)
        return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"
    t = int(s)
    if t >= 3600:
        return f"{t // 3600}h{(t % 3600) // 60:02d}m"
    if t >= 60:
        return f"{t // 60}m{t % 60:02d}s"
    return f"{t}s"


def grid_text(cells: Mapping[tuple[str, str], tuple[CellState, str | None]]) -> str:
    """7x4 table: rows are the paper's architecture titles, columns the four procedures."""
    procs = list(PROCEDURES)
    header = ["architecture (Figure 2 row)"] + [PROCEDURES[p].title for p in procs]
    body = []
    for name, pair in PAIRS.items():
        row = [f"{pair.row}. {pair.title}"]
        for p in procs:
            got = cells.get((name, p))
            row.append(_short(*got) if got else "")
        body.append(row)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*r) for r in body]
    return "\n".join(lines)


def _valid_cell(c: Any) -> bool:
    return (
        isinstance(c, dict)
        and isinstance(c.get("run_id"), str)
        and c["run_id"] == Path(c["run_id"]).name  # a name in the results directory,
        and not c["run_id"].startswith(".")  # never a path out of it
        and "\0" not in c["run_id"]
        and c.get("arch") in ALL_PAIRS
        and c.get("procedure") in PROCEDURES
        and isinstance(c.get("seed"), int)
        and not isinstance(c.get("seed"), bool)
    )


def load_manifests(
    results: Path, warn: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Every matrix manifest of ``results``, as written by ``matrix``: a manifest that is not
    a JSON object with a ``matrix_id`` and a list of cells is skipped; so is a cell without a
    text ``run_id``, a known architecture and procedure and an integer seed. ``warn`` is told
    of each skip (the report lists them)."""
    out = []
    for p in ResultsDir(results).manifests():
        try:
            m = read_json(p)
        except (OSError, ValueError) as e:
            if warn:
                warn(f"skipped {p}: {e}")
            continue
        if not (isinstance(m, dict) and isinstance(m.get("cells"), list)
                and isinstance(m.get("matrix_id"), str)):  # fmt: skip
            if warn:
                warn(f"skipped {p}: not a matrix manifest (no matrix_id or list of cells)")
            continue
        cells = [c for c in m["cells"] if _valid_cell(c)]
        if len(cells) < len(m["cells"]) and warn:
            warn(f"skipped {len(m['cells']) - len(cells)} malformed cell(s) of {p}")
        shared = m.get("shared") if isinstance(m.get("shared"), dict) else {}
        out.append({**m, "cells": cells, "shared": shared})
    return out
