"""The report's tables: the 7x4 verdict grid and the throughput table, written as Markdown,
LaTeX (booktabs) and CSV. Inputs are the report's pandas frames (``report.collect``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from architectures import PAIRS

from ..fileio import atomic_write_bytes, finite
from ..gan.procedures import PROCEDURES
from ..matrix.cells import format_value, markdown_table

MARK = {"trained": "✓", "low-quality": "✗ low IS", "collapsed": "✗ collapsed",
        "unevaluated": "completed, not evaluated"}  # fmt: skip


def _is_text(mean: Any, std: Any) -> str:
    if finite(mean) is None or not math.isfinite(mean):
        return ""
    return f"{mean:.2f} ± {std:.2f}" if finite(std) is not None else f"{mean:.2f}"


def _cell_text(part: pd.DataFrame, marks: dict[str, str], mode: str) -> str:
    """One grid cell's text for the runs of one mode; non-exact modes are labelled."""
    scores = part["final_is"].dropna()
    if len(scores) > 1:
        text = f"{scores.mean():.2f} ± {scores.std(ddof=1):.2f} ({len(scores)} seeds)"
    elif len(scores) == 1:
        r = part.loc[scores.index[0]]
        text = _is_text(r["final_is"], r["final_is_std"])
    else:
        text = ""
    modes = part["modes_covered"].dropna() if "modes_covered" in part else pd.Series()
    if len(modes) == 1 and len(scores) == 1:
        r = part.loc[modes.index[0]]
        text += f", {int(r['modes_covered'])}/{int(r['modes_total'])} modes"
    verdicts = {v for v in part["verdict"] if isinstance(v, str)}
    states = sorted({str(s) for s in part["status"]})
    completed = all(s == "completed" for s in states)
    if completed and len(verdicts) == 1 and next(iter(verdicts)) in marks:
        text = f"{text} {marks[next(iter(verdicts))]}".strip()
    if not text or not completed:
        text = f"{text} ({', '.join(states)})".strip() if text else ", ".join(states)
    return f"[{mode}] {text}" if mode != "exact" else text


def lsun_grid(summary: pd.DataFrame, tex: bool = False) -> pd.DataFrame:
    """The 7x4 table: rows = the paper's architecture titles, columns = the four procedures;
    each cell the final IS (mean ± std over splits; over seeds when several) and the verdict,
    or the cell's state when it has no score. Runs in a fast mode are labelled with it and
    never pooled with exact runs."""
    marks = MARK
    table = {}
    for name, pair in PAIRS.items():
        row = {}
        for p, proc in PROCEDURES.items():
            part = summary[(summary["arch"] == name) & (summary["procedure"] == p)]
            if not len(part):
                row[proc.title] = "no run"
                continue
            modes = part["mode"].fillna("exact")
            texts = [
                _cell_text(part[modes == m], marks, m)
                for m in sorted(set(modes), key=lambda m: (m != "exact", m))
            ]
            text = "; ".join(texts)
            row[proc.title] = tex_text(text) if tex else text
        table[f"{pair.row}. {pair.title}"] = row
    return pd.DataFrame.from_dict(table, orient="index")


THROUGHPUT_COLUMNS = ["arch", "procedure", "seed", "status", "iterations", "it_per_s",
                      "images_per_s", "train_seconds", "setup_seconds", "gpu_hours", "tflops",
                      "mfu", "device", "mode"]  # fmt: skip


def throughput_table(summary: pd.DataFrame) -> pd.DataFrame:
    return summary[THROUGHPUT_COLUMNS].copy()


def _cells(df: pd.DataFrame, index: bool) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows (missing values as "-", numbers as in the matrix summary)."""
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    rows = [
        ([str(idx)] if index else [])
        + [v if isinstance(v, Tex) else format_value(None if pd.isna(v) else v) for v in vals]
        for idx, vals in zip(df.index, df.itertuples(index=False), strict=True)
    ]
    return cols, rows


def to_markdown(df: pd.DataFrame, index: bool = False) -> str:
    cols, rows = _cells(df, index)
    records = [dict(zip(cols, row, strict=True)) for row in rows]
    return markdown_table(records, cols)  # escapes every cell


TEX_SPECIAL = {"&": r"\&", "%": r"\%", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
               "$": r"\$", "\\": r"\textbackslash{}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
               "\n": " ", "\r": " "}  # fmt: skip
# after escaping, the only TeX the tables add: the grid's marks and the plus-minus sign
TEX_SYMBOLS = {"±": r"$\pm$", "✓": r"\checkmark", "✗": r"$\times$"}


class Tex(str):
    """Text that is already TeX (built by ``tex_text`` from escaped parts): not escaped
    again. Every other string that reaches a .tex file is escaped in full by ``_tex``."""


def tex_text(s: str) -> Tex:
    """Plain text as TeX: every special character escaped, then the symbols of TEX_SYMBOLS
    typeset (whatever a file under --results contains, it cannot inject a command)."""
    escaped = "".join(TEX_SPECIAL.get(ch, ch) for ch in s)
    for plain, tex in TEX_SYMBOLS.items():
        escaped = escaped.replace(plain, tex)
    return Tex(escaped)


def _tex(s: str) -> str:
    return s if isinstance(s, Tex) else tex_text(s)


def to_latex(df: pd.DataFrame, caption: str, index: bool = False) -> str:
    """A booktabs table (needs \\usepackage{booktabs}, amssymb for the check marks)."""
    cols, rows = _cells(df, index)
    align = ("l" if index else "") + "l" * len(df.columns)
    out = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{_tex(caption)}}}",
           f"\\begin{{tabular}}{{{align}}}", "\\toprule",
           " & ".join(_tex(c) for c in cols) + " \\\\", "\\midrule"]  # fmt: skip
    out += [" & ".join(_tex(c) for c in cells) + " \\\\" for cells in rows]
    out += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(out) + "\n"


def write_table(
    out: Path, name: str, df: pd.DataFrame, caption: str, index: bool = False,
    tex_df: pd.DataFrame | None = None,
) -> list[Path]:  # fmt: skip
    paths = [out / f"{name}.md", out / f"{name}.tex", out / f"{name}.csv"]
    atomic_write_bytes(paths[0], to_markdown(df, index).encode())
    src = tex_df if tex_df is not None else df
    atomic_write_bytes(paths[1], to_latex(src, caption, index).encode())
    atomic_write_bytes(paths[2], df.to_csv(index=index).encode())
    return paths
