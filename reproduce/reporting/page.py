"""The report's HTML: the main page (``index.html``: the 7x4 score and verdict table, a 7x4
grid whose cells link to each run's page, every figure with a caption saying what it shows and
from which runs, one sentence instead of a figure nobody recorded data for, the throughput
table and every run) and the page of each run (``cells/<run id>.html``: its samples over time
as a strip, its curves, its config and the tail of its log). The data come from frames.py."""

from __future__ import annotations

import html
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pandas as pd

from architectures import PAIRS

from ..fileio import atomic_write_bytes, open_regular
from ..gan.procedures import PROCEDURES
from ..rundir.layout import ResultsDir
from ..rundir.rundir import RunDir
from .tables import throughput_table

STRIP = 12  # sample grids shown per run (evenly spaced, the last always)
LOG_TAIL = 40  # lines


def _url(path: str) -> str:
    """A relative path as a link target: percent-encoded (a run named with # or ? would
    otherwise end the path), then HTML-escaped for the attribute."""
    return html.escape(urllib.parse.quote(path), quote=True)


def _strip(grids: list[Path]) -> list[Path]:
    if len(grids) <= STRIP:
        return grids
    step = (len(grids) - 1) / (STRIP - 1)
    return [grids[round(i * step)] for i in range(STRIP)]


def _curves(tidy: pd.DataFrame, run_id: str, path: Path) -> str | None:
    """The run's losses (train and held-out) and scores against iterations, as one PNG;
    its caption, or None when the run logged nothing yet."""
    fig = cell_figure(tidy, run_id)
    if fig is None:
        return None
    from .plots import plt

    fig.savefig(path, dpi=90)
    plt.close(fig)
    scored = fig.axes[1].lines
    return (
        "Left: the critic loss (with the penalty), the Wasserstein estimate and the generator "
        "loss of every iteration (stats.jsonl; held-out critic losses where recorded). Right: "
        "the judge's score at each periodic and final evaluation (metrics.jsonl), from 1 (the "
        "score's least value) to at least 2." + ("" if scored else " No evaluation was recorded.")
    )


def cell_figure(tidy: pd.DataFrame, run_id: str) -> Any:
    """The figure of ``_curves`` (None when the run logged nothing yet)."""
    rows = tidy[tidy["run_id"] == run_id]
    losses = rows[rows["metric"].isin(["critic_loss", "wdist", "generator_loss"])]
    scores = rows[rows["metric"] == "is"]
    if not len(losses) and not len(scores):
        return None
    from . import plots  # the Agg backend and the report's style

    fig, axes = plots.plt.subplots(1, 2, figsize=(10, 3.2))
    for (metric, split), g in losses.groupby(["metric", "split"]):
        axes[0].plot(g["step"], g["value"].astype(float), label=f"{metric} ({split})", lw=0.8)
    axes[0].set_xlabel("generator iteration")
    axes[0].set_ylabel("loss")
    if len(losses):
        axes[0].legend(fontsize=7)
    for kind, g in scores.groupby("split"):
        axes[1].plot(g["step"], g["value"].astype(float), marker="o", label=str(kind))
    axes[1].set_xlabel("generator iteration")
    axes[1].set_ylabel("score")
    plots.span_y([axes[1]], scores["value"].astype(float), plots.SCORE_SPAN)
    if len(scores):
        axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _page(row: dict[str, Any], results: Path, cells: Path, tidy: pd.DataFrame) -> str:
    run_id = str(row["run_id"])
    rd = RunDir(results / run_id)
    title = f"{row['arch']} / {row['procedure']} / seed {row['seed']}"
    facts = {k: row.get(k) for k in ("status", "verdict", "judge", "final_is", "fid",
                                      "modes_covered", "iterations", "iters", "it_per_s",
                                      "train_seconds", "device", "mode")}  # fmt: skip
    shown = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                    for k, v in facts.items())  # fmt: skip
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "img{border:1px solid #eee;margin:2px}.cap{color:#555;font-size:13px}"
        "pre{background:#f6f6f6;padding:1em;font-size:12px;overflow:auto}</style></head><body>",
        f"<p><a href='../index.html'>report</a></p><h1>{html.escape(title)}</h1>",
        f"<p><code>{html.escape(run_id)}</code></p><table>{shown}</table>",
    ]
    grids = _strip([p for _, p in rd.sample_grids()])
    parts.append("<h2>Samples over time</h2>")
    if grids:
        its = [int(p.stem.split("-")[1]) for p in grids]
        parts += [f"<figure><img src='{_url(os.path.relpath(p, cells))}' width='160' "
                  f"alt='iteration {i}' title='iteration {i}'>"
                  f"<figcaption class='cap'>{i}</figcaption></figure>"
                  for p, i in zip(grids, its, strict=True)]  # fmt: skip
        parts.append(
            "<p class='cap'>The fixed-noise 8x8 sample grid at generator iterations "
            f"{', '.join(map(str, its))} (samples/ of this run).</p>"
        )
    else:
        parts.append("<p>No sample grid yet.</p>")
    caption = _curves(tidy, run_id, cells / f"{run_id}.png")
    parts.append("<h2>Curves</h2>")
    if caption is None:
        parts.append("<p>No statistics were logged yet.</p>")
    else:
        parts += [f"<p><img src='{_url(run_id + '.png')}' alt='curves'></p>",
                  f"<p class='cap'>{html.escape(caption)}</p>"]  # fmt: skip
    config = _bounded_text(rd.config_file, 1 << 20) or "(no config.json)"
    log = _bounded_text(rd.log_file, 1 << 20, tail=True).splitlines()[-LOG_TAIL:]
    tail = "\n".join(log) or "(no log yet)"
    parts += ["<h2>Config</h2>", f"<pre>{html.escape(config)}</pre>",
              f"<h2>Log (last {LOG_TAIL} lines)</h2>",
              f"<pre>{html.escape(tail)}</pre></body></html>"]  # fmt: skip
    return "\n".join(parts)


def _bounded_text(path: Path, limit: int, tail: bool = False) -> str:
    """A run file's text for its page: a regular file only (never a FIFO, a device or a
    link), at most ``limit`` bytes (its last ones with ``tail``); '' when missing, a note
    when it cannot be shown."""
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            if size > limit and not tail:
                return f"({path.name}: {size:,} bytes, not shown)"
            f.seek(max(0, size - limit))
            return f.read(limit).decode(errors="replace")
    except FileNotFoundError:
        return ""
    except OSError as e:
        return f"({path.name} not shown: {e})"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_cell_pages(summary: pd.DataFrame, tidy: pd.DataFrame, results: Path,
                     out: Path) -> dict[str, Path]:  # fmt: skip
    """One page per run that has a directory; run id -> page."""
    cells = out / "cells"
    cells.mkdir(parents=True, exist_ok=True)
    pages: dict[str, Path] = {}
    for row in summary.to_dict("records"):
        if not ResultsDir(results).run(str(row["run_id"])).config_file.is_file():
            continue  # pending: listed in a manifest, never started
        page = cells / f"{row['run_id']}.html"
        atomic_write_bytes(page, _page(row, results, cells, tidy).encode())
        pages[str(row["run_id"])] = page
    return pages


def link_grid(summary: pd.DataFrame, pages: dict[str, Path], out: Path) -> str:
    """The 7x4 grid (rows: the paper's architectures, columns: the procedures) whose cells
    link to each seed's page, with its status and verdict."""
    head = "".join(f"<th>{html.escape(p.title)}</th>" for p in PROCEDURES.values())
    rows = []
    for name, pair in PAIRS.items():
        cells = []
        for proc in PROCEDURES:
            runs = summary[(summary["arch"] == name) & (summary["procedure"] == proc)]
            links = []
            for r in runs.sort_values("seed").to_dict("records"):
                label = html.escape(f"s{r['seed']} {r['status']} {_fmt(r.get('verdict'))}")
                page = pages.get(str(r["run_id"]))
                links.append(f"<a href='{_url(os.path.relpath(page, out))}'>{label}</a>"
                             if page else label)  # fmt: skip
            cells.append(f"<td>{'<br>'.join(links)}</td>")
        rows.append(f"<tr><th>{pair.row}. {html.escape(pair.title)}</th>{''.join(cells)}</tr>")
    return f"<table class='t'><tr><th>architecture</th>{head}</tr>{''.join(rows)}</table>"


PLOT_TITLES = {
    "samples_grid": "Figure 2: fixed-noise samples of every cell",
    "is_vs_iteration": "Inception score against generator iterations",
    "is_vs_wallclock": "Inception score against training time",
    "critic_loss": "Negative critic loss, train and held-out (Figure 5a)",
    "throughput": "Throughput (real images per second)",
}
PLOT_CAPTIONS = {
    "samples_grid": "The newest fixed-noise sample grid of each cell, in the paper's 7x4 layout "
    "(Figure 2).",
    "is_vs_iteration": "The judge's score at each periodic and final evaluation, one panel per "
    "cell, all on one y axis from 1 (the score's least value) to at least 2.",
    "is_vs_wallclock": "The same scores against each run's training seconds (the wall-clock "
    "axis of the paper's Figure 3).",
    "critic_loss": "The negative critic loss of every iteration (train) and on held-out images "
    "where recorded, one panel per cell; its decrease is the paper's Figure 5a.",
    "throughput": "Real images consumed per second (n_critic batches per generator iteration) "
    "of every run in the results directory, by device.",
}
EMPTY_NOTES = {
    "is_vs_iteration": "No run recorded a score (evaluation was off in every run).",
    "is_vs_wallclock": "No run recorded a score with its training time.",
    "critic_loss": "No run recorded training statistics yet.",
}
JUDGE_NOTE = (
    "Scores come from the run's judge: Inception (torch-fidelity's TF-compatible network, the "
    "paper's protocol) or, on the built-in demo data, the demo judge (a classifier of its 8 "
    "modes; its score is the Inception score's analogue over 8 classes, at most 8), with the "
    "modes its confident samples cover. Verdicts compare each cell with the real data's own "
    "scores under the same judge."
)


def _table(df: pd.DataFrame, index: bool) -> str:
    return df.to_html(index=index, na_rep="-", float_format=lambda v: f"{v:.4g}", border=0,
                      classes="t", escape=True)  # fmt: skip


def render_html(
    summary: pd.DataFrame,
    warnings: list[str],
    grid: pd.DataFrame,
    plotted: dict[str, list[Path]],
    out: Path,
    matrix: str | None,
    cells: str,
    label: str,
    grid_runs: int,
    banner: str | None = None,
) -> str:
    """The main page. ``cells``: the linked 7x4 grid (``link_grid``); ``grid_runs``: how many
    runs the 7x4 views are drawn from; ``banner``: what the verdicts mean
    (``matrix.verdict_banner``), at the top."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<title>WGAN-GP reproduction report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:1400px}",
        "table.t{border-collapse:collapse;font-size:13px;margin:1em 0}",
        "table.t td,table.t th{border-bottom:1px solid #ccc;padding:3px 8px;text-align:left}",
        "img{max-width:100%;border:1px solid #eee}.warn{color:#a40}.cap{color:#555}",
        ".banner{background:#fff4d6;border:1px solid #e0c068;padding:.6em 1em}</style>",
        "</head><body><h1>WGAN-GP reproduction report</h1>",
        f"<p>{len(summary)} runs; {int((summary['status'] == 'completed').sum())} completed.</p>",
    ]
    if banner:
        parts.append(f"<p class='banner'>{html.escape(banner)}</p>")
    if warnings:
        parts.append("<h2 class='warn'>Skipped files</h2><ul class='warn'>")
        parts += [f"<li>{html.escape(w)}</li>" for w in warnings]
        parts.append("</ul>")
    source = f"matrix {html.escape(matrix)}" if matrix else "every run"
    parts += [f"<h2>Final {html.escape(label)} and verdict (7x4; {source})</h2>",
              f"<p>{html.escape(JUDGE_NOTE)}</p>", _table(grid, True),
              "<h2>Each cell's page</h2><p>Samples over time, curves, config and log of each "
              "run (one link per seed).</p>", cells]  # fmt: skip
    for name in ("samples_grid", "is_vs_iteration", "is_vs_wallclock", "critic_loss",
                 "throughput"):  # fmt: skip
        title = PLOT_TITLES[name].replace("Inception score", label)
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if not plotted[name]:
            parts.append(f"<p>{html.escape(EMPTY_NOTES[name])}</p>")
            continue
        png = next(p for p in plotted[name] if p.suffix == ".png")
        pdf = next(p for p in plotted[name] if p.suffix == ".pdf")
        runs = (f"all {len(summary)} runs" if name == "throughput"
                else f"the {grid_runs} runs of {source}")  # fmt: skip
        caption = f"{PLOT_CAPTIONS[name].replace('Inception score', label)} From {runs}."
        parts += [f"<p><img src='{_url(str(png.relative_to(out)))}' alt='{html.escape(name)}'>"
                  f"<br><a href='{_url(str(pdf.relative_to(out)))}'>PDF</a></p>",
                  f"<p class='cap'>{html.escape(caption)}</p>"]  # fmt: skip
    parts += ["<h2>Throughput and cost</h2>", _table(throughput_table(summary), False)]
    parts += ["<h2>All runs</h2>", _table(summary, False)]
    parts.append("<p>Tables as Markdown, LaTeX and CSV next to this page.</p></body></html>")
    return "\n".join(parts)
