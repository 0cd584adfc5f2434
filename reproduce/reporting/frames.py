"""``python -m reproduce report``: every run of a results directory into pandas frames, tables
(Markdown, LaTeX booktabs, CSV), seaborn plots (PNG, PDF) and one static HTML page.

- ``tidy``: one row per (run, step, metric): the training statistics (stats.jsonl), the
  held-out critic losses (heldout.jsonl) and the evaluations (metrics.jsonl).
- ``summary``: one row per run (cell x seed): status, verdict, final and best Inception
  score, FID, KID, iterations, throughput, GPU-hours, device. Cells listed in a matrix
  manifest but never started appear as ``pending``; running, partial, failed and diverged
  cells appear as such.
- ``by_cell``: the summary aggregated over seeds (mean and std of the final IS).

Unreadable files (corrupt JSON, a torn or garbled line) are skipped with a warning naming
them; ``strict=True`` raises instead.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from architectures import ALL_PAIRS, PAIRS

from ..config.run import upgrade_config
from ..errors import UserError
from ..evaluation.keys import FID, IS_MEAN, IS_STD, KID_MEAN
from ..fileio import atomic_write_bytes, count, finite, open_regular, read_json
from ..gan.procedures import PROCEDURES
from ..matrix.cells import cell_state, load_manifests, verdict_banner
from ..rundir.layout import ResultsDir
from ..rundir.rundir import LoadedRun, RunDir, judge_name, load_run
from .page import link_grid, render_html, write_cell_pages
from .tables import lsun_grid, throughput_table, write_table

STAT_METRICS = ("critic_loss", "wdist", "d_real", "d_fake", "gp", "generator_loss")


class ReportError(UserError):
    """A corrupt file under ``--strict``."""


WARNINGS_PER_FILE = 5  # then one line counting the rest
MAX_LINE = 1 << 20  # bytes; a longer JSON line is junk, skipped without being held in memory
MAX_JSON = 16 << 20  # bytes; a config/status/verdict file larger than this is not ours


@dataclass
class Loader:
    """Reads a results directory's files for the report, never trusting them: corrupt or
    wrongly typed content is skipped with a warning (at most ``WARNINGS_PER_FILE`` per file,
    then a count), JSON-lines files are streamed line by line, and no line or file beyond a
    bounded size is held in memory. ``strict=True`` raises on the first problem instead."""

    strict: bool = False
    warnings: list[str] = field(default_factory=list)

    def warn(self, msg: str) -> None:
        if self.strict:
            raise ReportError(f"--strict: {msg}")
        self.warnings.append(msg)

    def json(self, path: Path) -> dict[str, Any] | None:
        if not path.exists() and not path.is_symlink():
            return None
        try:  # a regular file (never a FIFO, a device or a link), bounded
            value = read_json(path, MAX_JSON)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
            return value
        except (OSError, ValueError) as e:
            self.warn(f"skipped {path}: {str(e)[:200]}")
            return None

    def jsonl(self, path: Path, max_bytes: int | None = None) -> list[dict[str, Any]]:
        """``max_bytes``: a file larger than this (more than its run can have written) is
        skipped whole, with a warning, not read."""
        rows: list[dict[str, Any]] = []
        bad = 0
        try:
            f = open_regular(path)
        except FileNotFoundError:
            return rows
        except OSError as e:
            self.warn(f"skipped {path}: {e}")
            return rows
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            f.close()
            self.warn(f"skipped {path}: {size:,} bytes, more than its run's iterations write")
            return rows
        with f:
            n = 0
            while True:
                line = f.readline(MAX_LINE + 1)
                if not line:
                    break
                n += 1
                torn = not line.endswith(b"\n")
                error: str | Exception | None = None
                if len(line) > MAX_LINE:
                    error = f"longer than {MAX_LINE >> 20} MiB"
                    while line and not line.endswith(b"\n"):  # skip the rest of it
                        line = f.readline(MAX_LINE)
                    torn = False
                elif not line.strip():
                    continue
                elif not line.lstrip().startswith(b"{"):
                    error = "not a JSON object"  # checked before parsing: junk is cheap
                else:
                    try:
                        row = json.loads(line)
                        if not isinstance(row, dict):
                            raise ValueError("not a JSON object")
                        rows.append(row)
                    except (ValueError, RecursionError) as e:
                        error = e  # formatted only if it is reported
                if error is not None:
                    bad += 1
                    if bad <= WARNINGS_PER_FILE or self.strict:
                        what = "truncated last line" if torn else f"line {n}"
                        self.warn(f"skipped {what} of {path}: {str(error)[:200]}")
        if bad > WARNINGS_PER_FILE:
            self.warn(f"skipped {bad - WARNINGS_PER_FILE:,} more bad lines of {path}")
        return rows


def _iters(cfg: dict[str, Any]) -> int:
    """A run's iterations from its config (a checked int; 0 when unusable)."""
    v = cfg.get("iters")
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10**9 else 0


def _text(v: Any) -> str | None:
    return v[:200] if isinstance(v, str) else None


def _run_config(cfg: Any) -> dict[str, Any] | None:
    """The fields of a run's config the report relies on, checked; None when unusable."""
    if not isinstance(cfg, dict):
        return None
    seed = cfg.get("seed")
    if (cfg.get("arch") not in ALL_PAIRS or cfg.get("procedure") not in PROCEDURES
            or not isinstance(seed, int) or isinstance(seed, bool)):  # fmt: skip
        return None
    return upgrade_config(cfg)  # old runs' renamed options under today's names


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------
@dataclass
class Collected:
    summary: pd.DataFrame
    tidy: pd.DataFrame
    samples: dict[str, Path]  # run_id -> newest sample grid
    warnings: list[str]


SUMMARY_COLUMNS = [
    "arch", "procedure", "seed", "status", "verdict", "judge", "final_is", "final_is_std",
    "best_is", "best_is_iter", "fid", "kid", "modes_covered", "modes_total",
    "confident_fraction", "iterations", "iters", "it_per_s", "images_per_s",
    "train_seconds", "setup_seconds", "gpu_hours", "tflops", "mfu", "device", "mode", "dim",
    "batch_size", "dataset", "run_id",
]  # fmt: skip


MAX_ROW_BYTES = 4096  # a stats.jsonl row is about 200 bytes
MIN_BOUND = 16 << 20  # any run's files may be this large (read line by line, bounded)


def _curves(
    loader: Loader, run: LoadedRun, base: dict[str, Any], iters: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A run's tidy rows (training and held-out statistics, evaluations) and its evaluations:
    rows of the run's own iterations only (0 to ``iters``), and no file larger than a run of
    ``iters`` iterations writes (a million rows in a 2-iteration run took 52 s and 4.5 GB)."""
    tidy: list[dict[str, Any]] = []
    for file, split in ((run.dir.stats_file, "train"), (run.dir.heldout_file, "heldout")):
        for r in loader.jsonl(file, max_bytes=max(MIN_BOUND, (iters + 1) * MAX_ROW_BYTES)):
            step = count(r.get("iter"), -1)
            if not 0 <= step <= iters:
                continue
            for k in STAT_METRICS:
                if finite(r.get(k)) is not None:
                    tidy.append({**base, "step": step, "metric": k, "value": r[k],
                                 "split": split, "train_seconds": None})  # fmt: skip
    evals = [r for r in run.evaluations if 0 <= count(r.get("iter"), -1) <= iters]
    for r in evals:
        for k, name in ((IS_MEAN, "is"), (IS_STD, "is_std"), (FID, "fid"),
                        (KID_MEAN, "kid")):  # fmt: skip
            if finite(r.get(k)) is not None:
                tidy.append({**base, "step": count(r["iter"]), "metric": name,
                             "value": r[k], "split": _text(r.get("kind")) or "periodic",
                             "train_seconds": finite(r.get("train_seconds"))})  # fmt: skip
    return tidy, evals


def _summary_row(
    base: dict[str, Any],
    cfg: dict[str, Any],
    status: dict[str, Any],
    state: str,
    verdict: dict[str, Any],
    evals: list[dict[str, Any]],
) -> dict[str, Any]:
    """One run's line of the summary table."""
    finals = [r for r in evals if r.get("kind") == "final"]
    final = finals[-1] if finals else None
    scored = [r for r in evals if finite(r.get(IS_MEAN)) is not None]
    best = max(scored, key=lambda r: r[IS_MEAN]) if scored else None
    it_s = finite(status.get("it_per_s"))
    secs = finite(status.get("train_seconds"))
    device = _text(status.get("device"))
    n_critic, batch = finite(cfg.get("n_critic")), finite(cfg.get("batch_size"))
    on_gpu = isinstance(device, str) and device.startswith("cuda")
    return {
        **base,
        "status": state,
        "verdict": _text(verdict.get("verdict")),
        "final_is": finite(final.get(IS_MEAN)) if final else None,
        "final_is_std": finite(final.get(IS_STD)) if final else None,
        "best_is": best[IS_MEAN] if best else None,
        "best_is_iter": count(best["iter"]) if best else None,
        "fid": finite(final.get(FID)) if final else None,
        "kid": finite(final.get(KID_MEAN)) if final else None,
        "judge": judge_name(final),
        "modes_covered": finite(final.get("modes_covered")) if final else None,
        "modes_total": finite(final.get("modes_total")) if final else None,
        "confident_fraction": finite(final.get("confident_fraction")) if final else None,
        "iterations": count(status.get("iteration")),
        "iters": count(cfg.get("iters"), -1) if count(cfg.get("iters"), -1) >= 0 else None,
        "it_per_s": it_s,
        "images_per_s": it_s * n_critic * batch if it_s and n_critic and batch else None,
        "train_seconds": secs,
        "setup_seconds": finite(status.get("setup_seconds")),
        "gpu_hours": secs / 3600 if secs is not None and on_gpu else None,
        "tflops": finite(status.get("tflops")),
        "mfu": finite(status.get("mfu")),
        "device": device,
        "mode": _text(cfg.get("mode")) or "exact",
        "dim": finite(cfg.get("dim")),
        "batch_size": batch,
        "dataset": _text(cfg.get("dataset")),
    }


def _in_paper_order(runs: dict[str, dict[str, Any]]) -> pd.DataFrame:
    order = {a: i for i, a in enumerate(PAIRS)}
    porder = {p: i for i, p in enumerate(PROCEDURES)}
    summary = pd.DataFrame(list(runs.values()), columns=SUMMARY_COLUMNS)
    if len(summary):
        summary = summary.sort_values(
            by=["arch", "procedure", "seed"],
            key=lambda s: s.map(order) if s.name == "arch" else (
                s.map(porder) if s.name == "procedure" else s),
        ).reset_index(drop=True)  # fmt: skip
    return summary


def collect(results: Path, strict: bool = False) -> Collected:
    """Every image run under ``results`` (toy runs are Figure 1's), plus the cells a matrix
    asked for that never started, as pending."""
    loader = Loader(strict)
    runs: dict[str, dict[str, Any]] = {}
    tidy: list[dict[str, Any]] = []
    samples: dict[str, Path] = {}
    for d in sorted(p for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")):
        rd = RunDir(d)
        if not rd.config_file.exists():
            continue
        doc = loader.json(rd.config_file)
        if doc is None or doc.get("kind") == "toy":
            continue
        cfg = _run_config(doc.get("config"))
        if cfg is None:
            loader.warn(f"skipped {d}: config.json has no valid arch, procedure and seed")
            continue
        run = load_run(d, loader)
        status, verdict = run.status, run.verdict
        unreadable = rd.status_file.exists() and not status  # warned by the loader
        state = "unreadable" if unreadable else cell_state(run).state
        if state == "diverged":
            state = f"diverged @{count(status.get('diverged_at'), -1)}"
        base = {"run_id": d.name, "arch": cfg["arch"], "procedure": cfg["procedure"],
                "seed": cfg["seed"]}  # fmt: skip
        rows, evals = _curves(loader, run, base, _iters(cfg))
        tidy += rows
        grids = [p for _, p in rd.sample_grids()]
        if grids:
            samples[d.name] = grids[-1]
        runs[d.name] = _summary_row(base, cfg, status, state, verdict, evals)
    for m in load_manifests(results, loader.warn):
        for c in m["cells"]:
            if c["run_id"] not in runs:
                runs[c["run_id"]] = {"run_id": c["run_id"], "arch": c["arch"],
                                     "procedure": c["procedure"], "seed": c["seed"],
                                     "status": "pending", "iterations": 0,
                                     "iters": finite(m["shared"].get("iters")),
                                     "mode": _text(m["shared"].get("mode")) or "exact"}  # fmt: skip
    tidy_cols = ["run_id", "arch", "procedure", "seed", "step", "metric", "value", "split",
                 "train_seconds"]  # fmt: skip
    return Collected(_in_paper_order(runs), pd.DataFrame(tidy, columns=tidy_cols), samples,
                     loader.warnings)  # fmt: skip


def by_cell(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture x procedure x mode (exact and fast numbers are never pooled):
    final IS mean and std over seeds, seeds, states."""
    if not len(summary):
        return pd.DataFrame(columns=["arch", "procedure", "mode", "seeds", "final_is_mean",
                                     "final_is_seed_std", "statuses", "verdicts"])  # fmt: skip
    summary = summary.assign(mode=summary["mode"].fillna("exact"))
    g = summary.groupby(["arch", "procedure", "mode"], sort=False)
    return g.agg(
        seeds=("seed", "count"),
        final_is_mean=("final_is", lambda s: s.dropna().mean() if s.notna().any() else None),
        final_is_seed_std=(
            "final_is",
            lambda s: s.dropna().std(ddof=1) if s.notna().sum() > 1 else None,
        ),
        statuses=("status", lambda s: ", ".join(sorted(set(map(str, s))))),
        verdicts=("verdict", lambda s: ", ".join(sorted({str(v) for v in s if v}))),
    ).reset_index()


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _grid_args(summary: pd.DataFrame) -> dict[str, Any]:
    rows, cols = list(PAIRS), list(PROCEDURES)
    empty = {}
    for r in rows:
        for c in cols:
            part = summary[(summary["arch"] == r) & (summary["procedure"] == c)]
            empty[(r, c)] = ", ".join(sorted({str(s) for s in part["status"]})) or "no run"
    return {"rows": rows, "cols": cols,
            "row_titles": [f"{PAIRS[r].row}. {PAIRS[r].title}" for r in rows],
            "col_titles": [PROCEDURES[c].title for c in cols], "empty": empty}  # fmt: skip


def plot_all(c: Collected, every_run: pd.DataFrame, out: Path) -> dict[str, list[Path]]:
    """The 7x4 views from ``c`` (one matrix); the throughput bars from every run."""
    from . import plots

    args = _grid_args(c.summary)
    tidy = c.tidy
    # a figure whose data no run recorded is not drawn (an empty list; the page says why)
    plotted: dict[str, list[Path]] = {}
    is_rows = tidy[tidy["metric"] == "is"].copy()
    is_empty = {k: f"{v}: no scores" for k, v in args["empty"].items()}
    label = score_label(c.summary)
    scores = {"hue": None, "ylabel": label, "y_span": plots.SCORE_SPAN, **args, "empty": is_empty}
    plotted["is_vs_iteration"] = []
    if len(is_rows):
        fig = plots.faceted_lines(is_rows, x="step", y="value", xlabel="generator iteration",
                                  **scores)  # fmt: skip
        plotted["is_vs_iteration"] = plots.save(fig, out, "is_vs_iteration")
    wall = is_rows.dropna(subset=["train_seconds"]).copy()
    wall["train_seconds"] = wall["train_seconds"].astype(float)
    plotted["is_vs_wallclock"] = []
    if len(wall):
        fig = plots.faceted_lines(wall, x="train_seconds", y="value", xlabel="training seconds",
                                  **scores)  # fmt: skip
        plotted["is_vs_wallclock"] = plots.save(fig, out, "is_vs_wallclock")
    loss = tidy[tidy["metric"] == "critic_loss"].copy()
    loss["negative critic loss"] = -loss["value"].astype(float)
    plotted["critic_loss"] = []
    if len(loss):
        fig = plots.faceted_lines(loss, x="step", y="negative critic loss", hue="split",
                                  xlabel="generator iteration", ylabel="-critic loss",
                                  **args)  # fmt: skip
        plotted["critic_loss"] = plots.save(fig, out, "critic_loss")
    fig = plots.throughput_bars(every_run, "images_per_s", "real images / s")
    plotted["throughput"] = plots.save(fig, out, "throughput")
    plotted["samples_grid"] = plots.save(sample_grid(c), out, "samples_grid")
    return plotted


def score_label(summary: pd.DataFrame) -> str:
    """The y label of score plots: which judge(s) produced the scores."""
    column = summary.get("judge", [])
    judges = sorted({j for j in column if isinstance(j, str)})
    if judges == ["demo-judge"]:
        return "demo-judge score (IS analogue)"
    if judges == ["inception"]:
        return "Inception score"
    return "score (Inception or demo judge)"


def sample_grid(c: Collected, seed: int | None = None) -> Any:
    """Figure 2: the newest fixed-noise grid of every cell (the lowest seed when several)."""
    from PIL import Image

    from . import plots

    args = _grid_args(c.summary)
    images: dict[tuple[str, str], np.ndarray] = {}
    notes: dict[tuple[str, str], str] = {}
    for _, r in c.summary.sort_values("seed").iterrows():
        key = (r["arch"], r["procedure"])
        if key in images or (seed is not None and r["seed"] != seed):
            continue
        path = c.samples.get(r["run_id"])
        if path is not None:
            try:
                with Image.open(path) as im:
                    images[key] = np.asarray(im.convert("RGB"))
            except OSError:
                pass
        bits = [str(r["status"])] if r["status"] != "completed" else []
        if isinstance(r.get("verdict"), str) and r["status"] == "completed":
            bits.append(str(r["verdict"]))
        if finite(r.get("final_is")) is not None and not math.isnan(r["final_is"]):
            name = "judge IS" if r.get("judge") == "demo-judge" else "IS"
            bits.append(f"{name} {r['final_is']:.2f}")
            if finite(r.get("modes_covered")) is not None and not math.isnan(r["modes_covered"]):
                bits.append(f"{int(r['modes_covered'])}/{int(r['modes_total'])} modes")
        notes[key] = ", ".join(bits) or "completed"
    return plots.sample_grid_figure(images, args["rows"], args["cols"], args["row_titles"],
                                    args["col_titles"], notes)  # fmt: skip


# --------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------
@dataclass
class Report:
    out: Path
    files: list[Path]
    warnings: list[str]
    summary: pd.DataFrame


def restrict(c: Collected, run_ids: set[str]) -> Collected:
    return Collected(
        c.summary[c.summary["run_id"].isin(run_ids)].reset_index(drop=True),
        c.tidy[c.tidy["run_id"].isin(run_ids)].reset_index(drop=True),
        {k: v for k, v in c.samples.items() if k in run_ids},
        c.warnings,
    )


def grid_runs(results: Path, matrix: str | None) -> tuple[set[str] | None, str | None]:
    """The runs of the 7x4 views: those of ``--matrix`` (an id prefix), else of the LSUN
    matrix with the most cells (the newest on a tie), so that runs of one cell with other
    settings (a figure's short run, an older matrix) never mix into one cell. None: no
    manifest, every run."""
    manifests = load_manifests(results)  # collect() reports the ones skipped
    if matrix is not None:
        chosen = [m for m in manifests if str(m.get("matrix_id", "")).startswith(matrix)]
        if not chosen:
            known = ", ".join(str(m.get("matrix_id")) for m in manifests) or "none"
            raise UserError(f"--matrix: no matrix {matrix!r} in {results}; known: {known}")
        return {c["run_id"] for m in chosen for c in m["cells"]}, ", ".join(
            str(m["matrix_id"]) for m in chosen)  # fmt: skip
    lsun = [m for m in manifests if m.get("experiment") == "lsun"]
    if not lsun:
        return None, None

    def mtime(m: dict[str, Any]) -> float:
        try:
            return ResultsDir(results).manifest(str(m["matrix_id"])).stat().st_mtime
        except (OSError, ValueError):
            return 0.0

    best = max(lsun, key=lambda m: (len(m["cells"]), mtime(m)))
    return {c["run_id"] for c in best["cells"]}, str(best["matrix_id"])


def build(results: Path, out: Path, strict: bool = False, matrix: str | None = None,
          progress: Callable[[str], None] = lambda s: None) -> Report:  # fmt: skip
    ids, chosen = grid_runs(results, matrix)
    c = collect(results, strict)
    if matrix is not None and ids is not None:
        c = restrict(c, ids)
    if not len(c.summary):
        raise UserError(f"--results: no runs in {results} (train some with: python -m "
                        "reproduce matrix --profile demo)")  # fmt: skip
    g = restrict(c, ids) if ids is not None else c
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    atomic_write_bytes(out / "summary.csv", c.summary.to_csv(index=False).encode())
    atomic_write_bytes(out / "tidy.csv", c.tidy.to_csv(index=False).encode())
    cells = by_cell(c.summary)
    atomic_write_bytes(out / "by_cell.csv", cells.to_csv(index=False).encode())
    files += [out / "summary.csv", out / "tidy.csv", out / "by_cell.csv"]
    progress("tables")
    grid = lsun_grid(g.summary)
    grid.index.name = "architecture"
    tex_grid = lsun_grid(g.summary, tex=True)
    tex_grid.index.name = "architecture"
    files += write_table(out, "lsun_is_table", grid,
                         f"Final {score_label(g.summary)} (mean ± std over 10 splits; "
                         "verdict marked)", index=True, tex_df=tex_grid)  # fmt: skip
    files += write_table(out, "throughput_table", throughput_table(c.summary),
                         "Throughput and cost per cell")  # fmt: skip
    progress("plots")
    plotted = plot_all(g, c.summary, out)
    for paths in plotted.values():
        files += paths
    progress("pages")
    pages = write_cell_pages(g.summary, g.tidy, results, out)
    files += [*pages.values(), *(out / "cells").glob("*.png")]
    html_path = out / "index.html"
    links = link_grid(g.summary, pages, out)
    banner = verdict_banner(list(g.summary["verdict"]), list(g.summary["iters"]))
    page = render_html(c.summary, c.warnings, grid, plotted, out, chosen, links,
                       score_label(c.summary), len(g.summary), banner)  # fmt: skip
    atomic_write_bytes(html_path, page.encode())
    files.append(html_path)
    if c.warnings:
        atomic_write_bytes(out / "warnings.txt", ("\n".join(c.warnings) + "\n").encode())
        files.append(out / "warnings.txt")
    return Report(out, files, c.warnings, c.summary)
