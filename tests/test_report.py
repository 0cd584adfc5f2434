"""``python -m reproduce report`` after a real (small) demo matrix: every table, plot and the
HTML page; missing, failed and diverged cells shown as such; corrupt files skipped with a
warning naming them (``--strict``: an error); the page rendered in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from reproduce.reporting.frames import by_cell, collect, lsun_grid

from .conftest import FINAL_EVAL, cli_env, run_cli, tree

TABLES = ("lsun_is_table", "throughput_table")
PLOTS = ("is_vs_iteration", "is_vs_wallclock", "critic_loss", "throughput", "samples_grid")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    """A 2x2 demo matrix (4 iterations), one cell removed (pending), one marked failed, and a
    separately trained cell that diverged (nan at iteration 2)."""
    res = tmp_path_factory.mktemp("report") / "results"
    r = run_cli("matrix", "--profile", "demo", "--arch", "baseline", "tanh", "--procedure",
                "dcgan", "wgan-gp", "--iters", "4", "--executor", "debug", "--results", str(res),
                "--sample-every", "2", *FINAL_EVAL)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    runs = {d.name.rsplit("-", 2)[0]: d for d in res.iterdir() if (d / "config.json").exists()}
    shutil.rmtree(runs["tanh-dcgan"])  # listed in the manifest, never started -> pending
    status = json.loads((runs["tanh-wgan-gp"] / "status.json").read_text())
    status.update(state="failed", message="disk full")
    (runs["tanh-wgan-gp"] / "status.json").write_text(json.dumps(status))
    r = run_cli("train", "--arch", "no-norm", "--procedure", "wgan", "--dim", "8",
                "--batch-size", "16", "--iters", "4", "--no-count-flops", "--no-progress",
                "--results", str(res), env=cli_env(REPRODUCE_FAULTS="nan@2"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    return res


def test_report_writes_every_table_plot_and_the_page(results, tmp_path):
    out = tmp_path / "report"
    r = run_cli("report", "--results", str(results), "--out", str(out))
    assert r.returncode == 0, r.stderr
    for t in TABLES:
        for ext in ("md", "tex", "csv"):
            assert (out / f"{t}.{ext}").stat().st_size > 100, (t, ext)
    for p in PLOTS:
        for ext in ("png", "pdf"):
            assert (out / f"{p}.{ext}").stat().st_size > 1000, (p, ext)
    for f in ("summary.csv", "tidy.csv", "by_cell.csv", "index.html"):
        assert (out / f).exists()
    tex = (out / "lsun_is_table.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    assert tex.count("\\\\") == 8  # header and seven rows
    grid = pd.read_csv(out / "lsun_is_table.csv", index_col=0)
    assert grid.shape == (7, 4)
    # every completed cell is scored by the demo judge, with its modes and a verdict
    for arch, proc in (("1. Baseline (G: DCGAN, D: DCGAN)", "WGAN-GP"),
                       ("1. Baseline (G: DCGAN, D: DCGAN)", "DCGAN")):  # fmt: skip
        assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d, [0-8]/8 modes (✓|✗ low IS|✗ collapsed)",
                            grid.loc[arch, proc]), grid.loc[arch, proc]  # fmt: skip
    assert grid.loc["6. tanh nonlinearities everywhere in G and D", "DCGAN"] == "pending"
    # marked failed after it completed and was scored: its score, and its state
    assert grid.loc["6. tanh nonlinearities everywhere in G and D", "WGAN-GP"].endswith("(failed)")
    assert grid.loc["7. 101-layer ResNet G and D", "DCGAN"] == "no run"
    summary = pd.read_csv(out / "summary.csv")
    states = dict(zip(summary["arch"] + "/" + summary["procedure"], summary["status"],
                      strict=True))  # fmt: skip
    assert states["tanh/dcgan"] == "pending" and states["tanh/wgan-gp"] == "failed"
    assert states["no-norm/wgan"] == "diverged @2"
    assert states["baseline/dcgan"] == "completed"
    tidy = pd.read_csv(out / "tidy.csv")
    assert set(tidy.columns) >= {"run_id", "step", "metric", "value", "split"}
    assert {"train", "heldout"} <= set(tidy["split"])  # demo data has a held-out split
    done = summary[summary["status"] == "completed"]
    assert (done["images_per_s"] > 0).all() and (done["iterations"] == 4).all()
    assert (done["judge"] == "demo-judge").all() and done["final_is"].notna().all()
    assert done["verdict"].isin(["trained", "low-quality", "collapsed"]).all()
    # the page opens with what the verdicts mean, as the matrix's terminal summary ends
    grid_runs = summary[summary["arch"].isin(["baseline", "tanh"])]
    judged = int(grid_runs["verdict"].notna().sum())
    trained = int((grid_runs["verdict"] == "trained").sum())
    banner = (f"{trained} of {judged} judged cells trained, at 4 generator iterations: a smoke "
              "run of the pipeline (4 iterations train nothing); trained cells on a CPU: "
              "docs/proof-of-life.md (python -m reproduce figures showcase)")  # fmt: skip
    assert f"<p class='banner'>{banner}</p>" in (out / "index.html").read_text()


def test_the_banner_says_what_the_verdicts_mean():
    from reproduce.matrix.cells import verdict_banner

    assert verdict_banner(["trained", "collapsed", None], [8000, 8000, 8000]) == (
        "1 of 2 judged cells trained, at 8,000 generator iterations"
    )
    assert verdict_banner(["low-quality"] * 2, [400, 12_000]) == (
        "0 of 2 judged cells trained, at 400-12,000 generator iterations; trained cells on a "
        "CPU: docs/proof-of-life.md (python -m reproduce figures showcase)"
    )
    assert verdict_banner([None, None], [12, 12]) is None  # nothing judged yet
    assert verdict_banner(["collapsed"], [float("nan")]) is None


def test_the_grid_of_a_chosen_matrix(results, tmp_path):
    """`report --matrix ID` (documented in the README, missing from the command until now)."""
    (manifest,) = json.loads("[" + ",".join(
        p.read_text() for p in (results / "matrices").glob("*.json")) + "]")  # fmt: skip
    out = tmp_path / "report"
    r = run_cli("report", "--results", str(results), "--out", str(out),
                "--matrix", manifest["matrix_id"][:4])  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / "lsun_is_table.csv").exists()
    r = run_cli("report", "--results", str(results), "--out", str(tmp_path / "no"),
                "--matrix", "zzzz")  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--matrix: no matrix 'zzzz'" in r.stderr and not (tmp_path / "no").exists()


def test_corrupt_files_are_skipped_with_a_warning_or_fail_under_strict(results, tmp_path):
    bad = tmp_path / "results"
    shutil.copytree(results, bad)
    run = next(d for d in bad.iterdir() if d.name.startswith("baseline-dcgan"))
    with (run / "stats.jsonl").open("a") as f:
        f.write('{"iter": 99, "critic_lo')  # torn last line
    (run / "verdict.json").write_text("{not json")
    before = tree(bad)
    r = run_cli("report", "--results", str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert f"{run / 'stats.jsonl'}" in r.stderr and f"{run / 'verdict.json'}" in r.stderr
    assert "truncated last line" in r.stderr
    assert (tmp_path / "out" / "warnings.txt").exists()
    r = run_cli("report", "--results", str(bad), "--out", str(tmp_path / "strict"), "--strict")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--strict" in lines[0] and str(run) in lines[0], r.stderr
    assert not (tmp_path / "strict").exists() and tree(bad) == before


def test_seeds_aggregate_and_the_grid_marks_verdicts():
    summary = pd.DataFrame([
        {"arch": "baseline", "procedure": "wgan-gp", "seed": s, "status": "completed",
         "verdict": "trained", "final_is": v, "final_is_std": 0.1, "run_id": f"r{s}",
         "mode": "exact"}
        for s, v in ((0, 3.0), (1, 4.0))
    ] + [{"arch": "baseline", "procedure": "dcgan", "seed": 0, "status": "completed",
          "verdict": "collapsed", "final_is": 1.5, "final_is_std": 0.05,
          "run_id": "d", "mode": "exact"},
         # a fast-mode run of an exact cell: labelled, never pooled with the exact seeds
         {"arch": "baseline", "procedure": "wgan-gp", "seed": 0, "status": "completed",
          "verdict": "trained", "final_is": 9.0, "final_is_std": 0.2, "run_id": "f",
          "mode": "fast"}])  # fmt: skip
    grid = lsun_grid(summary)
    assert (grid.loc["1. Baseline (G: DCGAN, D: DCGAN)", "WGAN-GP"]
            == "3.50 ± 0.71 (2 seeds) ✓; [fast] 9.00 ± 0.20 ✓")  # fmt: skip
    assert grid.loc["1. Baseline (G: DCGAN, D: DCGAN)", "DCGAN"] == "1.50 ± 0.05 ✗ collapsed"
    cells = by_cell(summary)
    exact = cells[(cells["procedure"] == "wgan-gp") & (cells["mode"] == "exact")].iloc[0]
    assert exact["seeds"] == 2 and exact["final_is_mean"] == 3.5
    fast = cells[(cells["procedure"] == "wgan-gp") & (cells["mode"] == "fast")].iloc[0]
    assert fast["seeds"] == 1 and fast["final_is_mean"] == 9.0


def test_report_of_an_empty_or_missing_directory_is_a_user_error(tmp_path):
    r = run_cli("report", "--results", str(tmp_path / "nope"))
    assert r.returncode == 2 and "--results" in r.stderr
    r = run_cli("report", "--results", str(tmp_path))
    assert r.returncode == 2 and "no runs" in r.stderr
    assert tree(tmp_path) == []
    c = collect(tmp_path)
    assert c.summary.empty


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_in_headless_chromium(results, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    out = tmp_path / "report"
    assert run_cli("report", "--results", str(results), "--out", str(out)).returncode == 0
    page = out / "index.html"
    text = page.read_text()
    srcs = re.findall(r"<img src='([^']+)'", text)
    assert len(srcs) == len(PLOTS)
    for src in srcs:  # every image the page references exists and decodes
        with Image.open(out / src) as im:
            im.verify()
    shot = tmp_path / "screenshot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-default-apps", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'p'}",
             "--window-size=1400,2400"]  # fmt: skip
    subprocess.run([browser, *flags, f"--screenshot={shot}", page.as_uri()], check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert dom.count("<img") == len(PLOTS) and "Final demo-judge score" in dom
    with Image.open(shot) as im:
        assert im.size == (1400, 2400)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # text, tables and images, not blank


def test_a_metric_no_run_recorded_is_one_sentence_not_empty_axes(results, tmp_path):
    """Without any evaluation (scores removed), the score figures are not drawn: the page says
    so in one sentence each, and every image it references exists."""
    bare = tmp_path / "results"
    shutil.copytree(results, bare)
    for m in bare.glob("*/metrics.jsonl"):
        m.unlink()
    out = tmp_path / "report"
    r = run_cli("report", "--results", str(bare), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert not (out / "is_vs_iteration.png").exists()
    assert not (out / "is_vs_wallclock.png").exists()
    text = (out / "index.html").read_text()
    assert "No run recorded a score (evaluation was off in every run)." in text
    srcs = re.findall(r"<img src='([^']+)'", text)
    assert len(srcs) == len(PLOTS) - 2 and all((out / s).exists() for s in srcs)


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(change(doc)) if callable(change) else change)


def _first(results: Path, prefix: str) -> Path:
    return next(d for d in sorted(results.iterdir()) if d.name.startswith(prefix))


# Issue 18.5: valid JSON of the wrong shape, and numbers no run writes. Each crashed collect()
# with a traceback before; now each is skipped (a warning) or read as "no value".
CORRUPTIONS = {
    "config is text": ("baseline-dcgan", "config.json", lambda d: {**d, "config": "arch"}),
    "config fields of wrong types": ("baseline-dcgan", "config.json",
                                     lambda d: {**d, "config": {"arch": 5, "seed": "x"}}),
    "n_critic null": ("baseline-dcgan", "config.json",
                      lambda d: {**d, "config": {**d["config"], "n_critic": None,
                                                 "batch_size": "many", "iters": 1e400}}),
    "iteration is text": ("baseline-wgan-gp", "status.json",
                          lambda d: {**d, "iteration": "abc", "iters": [1], "it_per_s": "fast",
                                     "train_seconds": "1e400", "device": 5, "tflops": {}}),
    "status is a list": ("baseline-wgan-gp", "status.json", "[1, 2, 3]"),
    "diverged_at junk": ("no-norm-wgan", "status.json", lambda d: {**d, "diverged_at": 1e400}),
    "verdict a number": ("baseline-wgan-gp", "verdict.json", lambda d: {**d, "verdict": 5}),
}  # fmt: skip
LINES = {
    "stats.jsonl": ['{"iter": 1e400, "critic_loss": 1.0}', '{"iter": -1e300, "wdist": 2}',
                    '{"iter": "3", "gp": 1}', '{"iter": 2, "critic_loss": NaN}', "[1, 2]"],
    "metrics.jsonl": ['{"iter": 1e400, "kind": "final", "inception_score_mean": 3}',
                      '{"iter": 4, "kind": ["final"], "inception_score_mean": "x"}',
                      '{"iter": 9, "kind": "final", "inception_score_mean": Infinity}'],
}  # fmt: skip
MANIFEST_JUNK = [
    {"matrix_id": "m-no-run-id", "experiment": "lsun", "cells": [{"arch": "baseline"}]},
    {"matrix_id": "m-cells-text", "cells": "abc"},
    {"matrix_id": "m-escape", "cells": [{"run_id": "../../etc", "arch": "baseline",
                                         "procedure": "dcgan", "seed": 0}], "shared": "x"},
    [1, 2],
]  # fmt: skip


def corrupt(results: Path, dest: Path, cases=CORRUPTIONS) -> Path:
    bad = dest / "results"
    shutil.copytree(results, bad)
    for prefix, name, change in cases.values():
        _edit_json(_first(bad, prefix) / name, change)
    run = _first(bad, "baseline-wgan-gp")
    for name, lines in LINES.items():
        with (run / name).open("a") as f:
            f.write("\n".join(lines) + "\n")
    for i, m in enumerate(MANIFEST_JUNK):
        (bad / "matrices" / f"junk-{i}.json").write_text(json.dumps(m))
    return bad


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_wrongly_typed_files_are_skipped_not_a_traceback(results, tmp_path, case):
    bad = corrupt(results, tmp_path, {case: CORRUPTIONS[case]})
    c = collect(bad)
    assert len(c.summary) >= 4 and c.warnings
    if case.startswith("config"):
        assert any("config.json has no valid arch, procedure and seed" in w for w in c.warnings)
    row = c.summary[c.summary["run_id"].str.startswith("baseline-wgan-gp")].iloc[0]
    assert row["iterations"] in (0, 4) and (pd.isna(row["it_per_s"]) or row["it_per_s"] > 0)
    assert all(isinstance(w, str) and len(w) < 600 for w in c.warnings)


def test_a_corrupt_results_directory_still_reports(results, tmp_path):
    """Every corruption at once, through the real CLI: exit 0, no traceback, each skip named
    once, the junk manifests' cells (and the one naming a path out of the results) ignored."""
    bad = corrupt(results, tmp_path)
    r = run_cli("report", "--results", str(bad), "--out", str(tmp_path / "out"))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "skipped" in r.stderr and "malformed cell(s)" in r.stderr
    assert "not a matrix manifest" in r.stderr
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert not summary["run_id"].isin(["../../etc"]).any()
    assert (tmp_path / "out" / "index.html").stat().st_size < 1_000_000


def test_warnings_are_capped_per_file_and_huge_lines_skipped(results, tmp_path):
    """Issue 18.5: a junk stats.jsonl gave one warning per line (4.18 million for 1 GB)."""
    from reproduce.reporting import frames as report

    bad = tmp_path / "results"
    shutil.copytree(results, bad)
    stats = _first(bad, "baseline-dcgan") / "stats.jsonl"
    with stats.open("ab") as f:
        f.write(b"junk\n" * 50_000)
        f.write(b"x" * (3 * report.MAX_LINE) + b"\n")  # one line of 3 MiB
        f.write(b'{"iter": 3, "critic_loss": 0.5}\n')  # a good line after it is still read
    c = collect(bad)
    mine = [w for w in c.warnings if str(stats) in w]
    assert len(mine) == report.WARNINGS_PER_FILE + 1
    assert mine[-1] == f"skipped {50_001 - report.WARNINGS_PER_FILE:,} more bad lines of {stats}"
    run_id = stats.parent.name
    rows = c.tidy[(c.tidy["run_id"] == run_id) & (c.tidy["metric"] == "critic_loss")]
    assert 0.5 in set(rows["value"])


def test_the_last_stats_row_is_read_from_the_end(results, tmp_path):
    """The summary's last training statistics come from the end of stats.jsonl (a 200 MB junk
    file was parsed whole for its last row), the same row as reading the whole file."""
    from reproduce.fileio import last_jsonl_row, read_jsonl

    stats = _first(results, "baseline-dcgan") / "stats.jsonl"
    assert last_jsonl_row(stats) == read_jsonl(stats)[-1] != {}
    f = tmp_path / "s.jsonl"
    f.write_bytes(b'{"iter": 1}\n{"iter": 2}\n[3]\njunk\n{"iter": 4, "torn"')
    assert last_jsonl_row(f) == {"iter": 2}  # not the list, the junk or the torn line
    f.write_bytes(b'{"iter": 1}\n' + b"junk\n" * 300_000)  # 1.5 MB: no row in the last MiB
    assert last_jsonl_row(f) == {} and last_jsonl_row(tmp_path / "missing") == {}
    f.write_bytes(b'{"iter": 1}\n' * 200_000)
    assert last_jsonl_row(f, window=100) == {"iter": 1}  # a cut first line is skipped


def test_strings_from_run_files_are_escaped_in_tex_and_markdown(results, tmp_path):
    """Issue 18.8: a device string from status.json reached throughput_table.tex verbatim
    (``_tex`` skipped escaping any cell containing ``$``), and the Markdown tables carried raw
    ``<script>``. Now every string is escaped for its format; only the grid's own symbols
    are typeset."""
    from reproduce.reporting.frames import lsun_grid, throughput_table, write_table

    bad = tmp_path / "results"
    shutil.copytree(results, bad)
    payload = "$\\input{/etc/passwd}$ <script>alert(1)</script> | & 50% #1 ~x^2 \\\\"
    run = _first(bad, "baseline-dcgan")
    _edit_json(run / "status.json", lambda d: {**d, "device": payload})
    _edit_json(run / "config.json", lambda d: {**d, "config": {**d["config"], "mode": payload}})
    c = collect(bad)
    out = tmp_path / "out"
    out.mkdir()
    write_table(out, "throughput_table", throughput_table(c.summary), "Throughput")
    write_table(out, "lsun_is_table", lsun_grid(c.summary), "Grid ±", index=True,
                tex_df=lsun_grid(c.summary, tex=True))  # fmt: skip
    for name in ("throughput_table", "lsun_is_table"):
        tex = (out / f"{name}.tex").read_text()
        assert "\\input" not in tex and "<script>" not in tex, tex
        assert "\\$\\textbackslash{}input\\{/etc/passwd\\}\\$" in tex
        assert "50\\% \\#1 \\textasciitilde{}x\\textasciicircum{}2" in tex
        md = (out / f"{name}.md").read_text()
        assert "<script>" not in md and "&lt;script&gt;alert(1)&lt;/script&gt; \\|" in md
    # the grid's own marks are still typeset
    assert "$\\pm$" in (out / "lsun_is_table.tex").read_text()
    assert "\\caption{Grid $\\pm$}" in (out / "lsun_is_table.tex").read_text()


def test_status_and_report_import_no_torch(results, tmp_path):
    """Both read files only: no torch (650 MB, 3.6 s), so status answers in under two seconds
    and a report stays under 1 GB (``tests/test_cli_startup.py`` for ``--help``)."""
    from .test_cli_startup import HEAVY, probe_imports

    out = probe_imports("status", "--results", str(results))
    assert out["rc"] == 0 and not set(out["loaded"]) & set(HEAVY), out
    out = probe_imports("report", "--results", str(results), "--out", str(tmp_path / "report"))
    assert out["rc"] == 0 and not set(out["loaded"]) & set(HEAVY), out
    assert (tmp_path / "report" / "index.html").is_file()


def test_each_run_has_a_page_that_the_grid_links_to(results, tmp_path):
    """Issue 19: a page per run (samples over time, curves, config, log tail), the linked
    7x4 grid on the main page, a caption under every figure, and `--open`'s file URL."""
    out = tmp_path / "report"
    r = run_cli("report", "--results", str(results), "--out", str(out), "--open")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == (out / "index.html").resolve().as_uri()
    text = (out / "index.html").read_text()
    links = re.findall(r"<a href='(cells/[^']+\.html)'>s0 ([a-z]+)", text)
    started = {d.name for d in results.iterdir() if (d / "config.json").exists()}
    in_grid = {Path(h).stem for h, _ in links}
    assert in_grid and in_grid <= started and len(links) == len(in_grid)
    assert text.count("<p class='cap'>") == text.count("<img src=")  # every figure captioned
    for href, _ in links:
        page = (out / href).read_text()
        run = results / Path(href).stem
        grids = sorted((run / "samples").glob("iter-*.png"))
        srcs = re.findall(r"<img src='([^']+)' width='160'", page)
        assert len(srcs) == len(grids) > 0, href  # the strip: every grid (4 iterations)
        assert all((out / "cells" / s).resolve() == g.resolve() for s, g in
                   zip(srcs, grids, strict=True))  # fmt: skip
        assert (out / "cells" / f"{run.name}.png").stat().st_size > 1000  # the curves
        assert html.escape(json.loads((run / "config.json").read_text())["run_id"]) in page
        assert html.escape((run / "log.txt").read_text().splitlines()[-1]) in page
        assert page.count("class='cap'") >= 2


def _drawn_axes(fig) -> list[tuple[tuple[float, float], str]]:
    """(y limits, offset text) of each facet with data, as drawn."""
    fig.canvas.draw()
    return [(ax.get_ylim(), ax.yaxis.get_major_formatter().get_offset()) for ax in fig.axes
            if ax.lines]  # fmt: skip


def test_score_facets_share_one_y_axis_from_one_without_an_offset():
    """A score that moved by 1e-5 is a flat line at 1 on the same axis as a cell that reached
    3, not a steep line labelled "1e-5+1" on its own axis."""
    from reproduce.reporting import plots

    frame = pd.DataFrame({"arch": ["a"] * 2 + ["b"] * 2, "procedure": ["p"] * 4,
                          "step": [6, 12, 6, 12],
                          "value": [1.00002, 1.00001, 1.5, 3.0]})  # fmt: skip
    grid = {"rows": ["a", "b"], "cols": ["p"], "row_titles": ["A", "B"], "col_titles": ["P"],
            "empty": {}, "x": "step", "y": "value", "hue": None, "xlabel": "i",
            "ylabel": "s"}  # fmt: skip
    drawn = _drawn_axes(plots.faceted_lines(frame, **grid, y_span=(1.0, 2.0)))
    assert len(drawn) == 2 and drawn[0] == drawn[1]
    (low, high), offset = drawn[0]
    assert low <= 1.0 and 3.0 <= high < 3.2 and offset == ""
    # a cell that stayed near 1 still spans 1..2, not its own 1e-5
    (low, high), offset = _drawn_axes(plots.faceted_lines(frame[:2], **grid, y_span=(1.0, 2.0)))[0]
    assert low <= 1.0 and high >= 2.0 and offset == ""


def test_the_reports_score_plots_use_the_shared_axis(results, tmp_path, monkeypatch):
    """Through the report's own plotting of a real demo matrix (4 iterations: every judge score
    within 0.1 of 1): both score figures on one axis from 1 to 2, the loss plot on its own."""
    from reproduce.reporting import frames as report
    from reproduce.reporting import plots

    seen: dict[str, list] = {}
    save = plots.save

    def recording_save(fig, out, name):
        seen[name] = _drawn_axes(fig)
        return save(fig, out, name)

    monkeypatch.setattr(plots, "save", recording_save)
    c = collect(results)
    report.plot_all(c, c.summary, tmp_path)
    for name in ("is_vs_iteration", "is_vs_wallclock"):
        limits = {lim for lim, _ in seen[name]}
        assert len(limits) == 1 and len(seen[name]) >= 2, (name, seen[name])
        ((low, high),) = limits
        assert low <= 1.0 and high >= 2.0 and all(off == "" for _, off in seen[name])
    assert len({lim for lim, _ in seen["critic_loss"]}) > 1


def test_a_cell_pages_scores_are_on_the_same_span(results):
    """Each run's page plots its scores from 1 to at least 2 without an offset, like the grid."""
    from reproduce.reporting.page import cell_figure

    c = collect(results)
    scored = c.tidy[c.tidy["metric"] == "is"]["run_id"].unique()
    assert len(scored) >= 2
    for run_id in scored:
        fig = cell_figure(c.tidy, run_id)
        fig.canvas.draw()
        (low, high) = fig.axes[1].get_ylim()
        assert low <= 1.0 and high >= 2.0, (run_id, low, high)
        assert fig.axes[1].yaxis.get_major_formatter().get_offset() == ""
