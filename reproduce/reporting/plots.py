"""Seaborn/matplotlib drawing for reports and the paper's figures; every figure is written as
PNG and PDF. Inputs are pandas frames or arrays (never run directories), so each function
can be tested on hand-made data."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..fileio import atomic_write_bytes

sns.set_theme(context="paper", style="whitegrid")

# The score plots' y axis: from 1, the Inception score's (and the judge's analogue's) least
# value (every sample given the same class probabilities), to at least 2, higher where a score is.
SCORE_SPAN = (1.0, 2.0)


def save(fig: Any, out: Path, name: str) -> list[Path]:
    """``out/name.png`` (150 dpi) and ``out/name.pdf``, written atomically."""
    paths = []
    for ext, kw in (("png", {"dpi": 150}), ("pdf", {})):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, bbox_inches="tight", **kw)
        path = out / f"{name}.{ext}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths


def _facet_note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=7,
            color="0.4", wrap=True)  # fmt: skip


def faceted_lines(
    frame: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str | None,
    rows: Sequence[str],
    cols: Sequence[str],
    row_titles: Sequence[str],
    col_titles: Sequence[str],
    xlabel: str,
    ylabel: str,
    empty: dict[tuple[str, str], str],
    y_span: tuple[float, float] | None = None,
) -> Any:
    """A rows x cols grid of line plots (one facet per architecture x procedure); facets
    without data show ``empty[(row, col)]`` (the cell's state) instead of a blank.

    ``y_span=(low, high)``: one y axis for every facet, from ``low`` (or the data's least
    value, if lower) to ``high`` (or the data's greatest), without matplotlib's offset
    notation. For scores, whose differences between cells are the point: on its own axis a
    facet whose score moved by 1e-5 fills its panel as a steep line ("1e-5+1")."""
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(2.6 * len(cols), 1.9 * len(rows)), squeeze=False,
        sharex=False,
    )  # fmt: skip
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i][j]
            part = frame[(frame["arch"] == r) & (frame["procedure"] == c)] if len(frame) else frame
            if len(part):
                legend = i == 0 and j == len(cols) - 1 and hue is not None
                sns.lineplot(data=part, x=x, y=y, hue=hue, ax=ax, linewidth=1, errorbar=None,
                             legend=legend)  # fmt: skip
            else:
                _facet_note(ax, empty.get((r, c), "no run"))
            ax.set_xlabel(xlabel if i == len(rows) - 1 else "")
            ax.set_ylabel(ylabel if j == 0 and i == len(rows) // 2 else "")  # once: it is long
            if i == 0:
                ax.set_title(col_titles[j], fontsize=9)
            if j == 0:
                title = textwrap.fill(row_titles[i], 28)
                ax.annotate(title, xy=(-0.45, 0.5), xycoords="axes fraction", rotation=90,
                            ha="center", va="center", fontsize=7)  # fmt: skip
            ax.tick_params(labelsize=6)
    if y_span is not None:
        span_y(axes.flat, frame[y].astype(float), y_span)
    fig.tight_layout()
    return fig


def span_y(axes: Any, values: pd.Series, span: tuple[float, float]) -> None:
    """Every axis in ``axes``: y from ``span[0]`` (or lower, to the least of ``values``) to
    ``span[1]`` (or higher), and no offset notation."""
    finite = values[np.isfinite(values)]
    low = min(span[0], float(finite.min())) if len(finite) else span[0]
    high = max(span[1], float(finite.max())) if len(finite) else span[1]
    pad = 0.04 * (high - low)
    for ax in axes:
        ax.set_ylim(low - pad, high + pad)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def sample_grid_figure(
    images: dict[tuple[str, str], np.ndarray],
    rows: Sequence[str],
    cols: Sequence[str],
    row_titles: Sequence[str],
    col_titles: Sequence[str],
    notes: dict[tuple[str, str], str],
) -> Any:
    """Figure 2: one (H, W, 3) uint8 sample grid per architecture x procedure."""
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(2.4 * len(cols), 2.5 * len(rows)), squeeze=False
    )
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            img = images.get((r, c))
            if img is not None:
                ax.imshow(img, interpolation="nearest")
            else:
                _facet_note(ax, notes.get((r, c), "no run"))
            note = notes.get((r, c)) if img is not None else None
            if note:
                ax.set_xlabel(note, fontsize=7)
            if i == 0:
                ax.set_title(col_titles[j], fontsize=10)
            if j == 0:
                ax.set_ylabel(textwrap.fill(row_titles[i], 30), fontsize=7)
    fig.tight_layout()
    return fig


def throughput_bars(frame: pd.DataFrame, value: str, label: str) -> Any:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    data = frame.dropna(subset=[value])
    if len(data):
        sns.barplot(data=data, x="arch", y=value, hue="procedure", ax=ax, errorbar=None)
        ax.set_yscale("log")
        ax.tick_params(axis="x", rotation=30, labelsize=7)
    else:
        _facet_note(ax, "no finished cell reports a throughput")
    ax.set_xlabel("architecture")
    ax.set_ylabel(label)
    fig.tight_layout()
    return fig


def curves_figure(frame: pd.DataFrame, x_cols: Sequence[tuple[str, str]], y: str, ylabel: str,
                  hue: str) -> Any:  # fmt: skip
    """Side-by-side panels of the same curves against different x axes (Figure 3)."""
    fig, axes = plt.subplots(1, len(x_cols), figsize=(4.2 * len(x_cols), 3.2), squeeze=False)
    for ax, (x, xlabel) in zip(axes[0], x_cols, strict=True):
        sns.lineplot(data=frame, x=x, y=y, hue=hue, ax=ax, errorbar=None, marker="o",
                     markersize=3)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def value_surfaces(
    surfaces: dict[tuple[str, str], np.ndarray],
    points: dict[str, np.ndarray],
    datasets: Sequence[str],
    methods: Sequence[tuple[str, str]],
    extent: float,
) -> Any:
    """Figure 1a: rows = methods (clipping, penalty), columns = datasets; contours of D."""
    fig, axes = plt.subplots(len(methods), len(datasets), figsize=(3.2 * len(datasets),
                             3.0 * len(methods)), squeeze=False)  # fmt: skip
    lin = np.linspace(-extent, extent, next(iter(surfaces.values())).shape[0])
    for i, (m, mtitle) in enumerate(methods):
        for j, d in enumerate(datasets):
            ax = axes[i][j]
            s = surfaces.get((d, m))
            if s is not None:
                ax.contour(lin, lin, s, levels=20, linewidths=0.7, cmap="viridis")
            p = points[d]
            ax.scatter(p[:, 0], p[:, 1], marker="+", c="orange", s=8, linewidths=0.6)
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(d, fontsize=10)
            if j == 0:
                ax.set_ylabel(mtitle, fontsize=10)
    fig.tight_layout()
    return fig


def gradient_norms_figure(
    norms: dict[str, np.ndarray], hists: dict[str, tuple[np.ndarray, np.ndarray]]
) -> Any:
    """Figure 1b: log10 gradient norm per critic layer (layer L+1 = output on the left,
    layer 1 on the right, as the paper draws it) and the critic weight histograms."""
    fig = plt.figure(figsize=(10, 3.4))
    ax = fig.add_subplot(1, 2, 1)
    for label, g in norms.items():
        layers = np.arange(1, len(g) + 1)
        ax.plot(layers, np.log10(np.maximum(g, 1e-300)), marker="o", markersize=3, label=label)
    ax.invert_xaxis()
    ax.set_xlabel("critic layer")
    ax.set_ylabel("log10 gradient norm")
    ax.legend(fontsize=7)
    n = len(hists)
    for k, (label, (counts, edges)) in enumerate(hists.items()):
        hax = fig.add_subplot(n, 2, 2 * (k + 1))
        centres = (edges[:-1] + edges[1:]) / 2
        hax.bar(centres, counts, width=edges[1] - edges[0], color=f"C{k}")
        hax.set_yscale("log")
        hax.set_ylabel(label, fontsize=7)
        hax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def progress_figure(
    rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]],
    real: np.ndarray,
    real_title: str,
) -> Any:
    """The showcase: one row per run, its fixed-noise grids over iterations (column titles
    under each row's own grids), the data's real images in the first column of every row."""
    cols = 1 + max(len(grids) for _, grids in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.0 * cols, 2.25 * len(rows)), squeeze=False)
    for i, (title, grids) in enumerate(rows):
        cells = [(real_title, real), *grids]
        for j in range(cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(cells):
                ax.axis("off")
                continue
            ax.imshow(cells[j][1], interpolation="nearest")
            ax.set_title(cells[j][0], fontsize=8)
            if j == 1:
                ax.set_ylabel(textwrap.fill(title, 28), fontsize=8)
    fig.tight_layout()
    return fig


def score_curves_figure(frame: pd.DataFrame, real_is: float | None, modes_total: int) -> Any:
    """The showcase's judge curves: the judge's score and the modes covered against the
    generator iteration, one line per run (column ``run``), the data's own score dashed."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9.0, 3.2))
    sns.lineplot(data=frame, x="step", y="is", hue="run", marker="o", ax=a)
    if real_is is not None:
        a.axhline(real_is, ls="--", color="0.3", lw=1)
        on_y = a.get_yaxis_transform()  # x in axes fractions, y in data
        a.text(0.01, real_is, "real images", va="bottom", fontsize=7, color="0.3",
               transform=on_y)  # fmt: skip
        a.axhline(real_is / 2, ls=":", color="0.5", lw=1)
        a.text(0.01, real_is / 2, "half: the verdict's bar", va="bottom", fontsize=7,
               color="0.5", transform=on_y)  # fmt: skip
    a.set_ylim(1.0, max(2.0, (real_is or 0) + 0.5, float(frame["is"].max()) + 0.2))
    a.set(xlabel="generator iteration", ylabel="judge score (IS analogue)")
    sns.lineplot(data=frame, x="step", y="modes", hue="run", marker="o", ax=b, legend=False)
    b.axhline(modes_total / 2, ls=":", color="0.5", lw=1)
    b.set_ylim(-0.3, modes_total + 0.3)
    b.set(xlabel="generator iteration", ylabel=f"modes covered (of {modes_total})")
    a.ticklabel_format(axis="y", useOffset=False, style="plain")
    fig.tight_layout()
    return fig
